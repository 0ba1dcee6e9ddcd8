using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Mola.Adapters;

/// <summary>
/// The keys PEFT's <c>LoraConfig.save_pretrained</c> writes beyond ours: each one is read (rank and alpha patterns,
/// rsLoRA, the layers transformed), known not to change the math (ignored), or refused by name where it would
/// change it and mola cannot do the same. An unknown key is refused too: a newer PEFT's option could change the math.
/// </summary>
public sealed record PeftConfig
{
    /// <summary>Keys mola's own config uses (<see cref="AdapterConfig.Save"/>) and the MoLA ones.</summary>
    static readonly HashSet<string> Ours = ["peft_type", "base_model_name_or_path", "target_modules", "r", "lora_alpha", "lora_dropout",
        "num_experts", "top_k", "aux_loss_coef", "allocation", "init", "pissa_iterations", "bias", "task_type"];

    /// <summary>Keys that do not change what a trained adapter computes: bookkeeping, how weights were initialised
    /// (init_lora_weights, LoftQ, EVA, CorDA), runtime switches. fan_in_fan_out only transposes a GPT-2 Conv1D's base
    /// weight; LLaMA-family modules are nn.Linear, for which PEFT itself turns it off.</summary>
    static readonly HashSet<string> NoEffect = ["auto_mapping", "revision", "inference_mode", "init_lora_weights", "loftq_config",
        "eva_config", "corda_config", "megatron_core", "runtime_config", "peft_version", "qalora_group_size", "ensure_weight_tying",
        "fan_in_fan_out", "layers_pattern"];

    /// <summary>Keys that change the math unless they hold their default (null, false, empty): refused otherwise.</summary>
    static readonly Dictionary<string, string> DefaultOnly = new()
    {
        ["modules_to_save"] = "fully trained copies of whole modules",
        ["use_dora"] = "DoRA's magnitude vectors",
        ["lora_bias"] = "a bias on lora_B",
        ["layer_replication"] = "replicated decoder layers",
        ["exclude_modules"] = "excluded modules",
        ["trainable_token_indices"] = "trained embedding rows",
        ["target_parameters"] = "adapted parameters instead of modules",
        ["alora_invocation_tokens"] = "activated LoRA",
        ["use_qalora"] = "QA-LoRA pooling",
        ["megatron_config"] = "Megatron parallel layers",
        ["arrow_config"] = "Arrow routing",
    };

    public bool UseRsLora { get; init; }
    /// <summary>PEFT's patterns in file order: a key matches a module whose name ends with it (at a dot), first match wins.</summary>
    public IReadOnlyList<(string Key, int Rank)> RankPattern { get; init; } = [];
    public IReadOnlyList<(string Key, double Alpha)> AlphaPattern { get; init; } = [];
    /// <summary>The only layers PEFT adapted; null for all.</summary>
    public int[]? LayersToTransform { get; init; }

    public bool IsPlain => !UseRsLora && RankPattern.Count == 0 && AlphaPattern.Count == 0 && LayersToTransform is null;

    /// <summary>Checks every key of <paramref name="o"/> and reads PEFT's own; null when none changes anything.</summary>
    public static PeftConfig? Read(JsonObject o, string path)
    {
        foreach (var (key, value) in o)
        {
            if (Ours.Contains(key) || NoEffect.Contains(key)) continue;
            if (DefaultOnly.TryGetValue(key, out var what))
            {
                if (!IsDefault(value))
                    throw new MolaException($"{path}: \"{key}\" is {JsonFile.Describe(value)}, but mola reads LoRA adapters without {what} (expected null or false)");
                continue;
            }
            if (key is not ("use_rslora" or "rank_pattern" or "alpha_pattern" or "layers_to_transform"))
                throw new MolaException($"{path}: unknown key \"{key}\" (not a PEFT LoRA key mola knows; it may change what the adapter computes)");
        }
        string bias = JsonFile.String(o, "bias", path) ?? "none";
        if (bias != "none")
            throw new MolaException($"{path}: \"bias\" is \"{bias}\", but mola reads adapters that train no biases (expected \"none\")");
        var peft = new PeftConfig
        {
            UseRsLora = JsonFile.Bool(o, "use_rslora", path) ?? false,
            RankPattern = Patterns(o, "rank_pattern", path).Select(p => (p.Key, JsonFile.IntValue(p.Value, $"rank_pattern.{p.Key}", path))).ToList(),
            AlphaPattern = Patterns(o, "alpha_pattern", path).Select(p => (p.Key, JsonFile.Number(o["alpha_pattern"]!.AsObject(), p.Key, path)!.Value)).ToList(),
            LayersToTransform = o["layers_to_transform"] switch
            {
                null => null,
                JsonValue v when v.GetValueKind() == JsonValueKind.Number => [JsonFile.IntValue(v, "layers_to_transform", path)],
                JsonArray => JsonFile.IntList(o, "layers_to_transform", path),
                var other => throw JsonFile.Expected(path, "layers_to_transform", "a layer index or a list of them", other),
            },
        };
        return peft.IsPlain ? null : peft;
    }

    /// <summary>PEFT's rank of <paramref name="module"/> in layer <paramref name="layer"/> (the pattern's or <paramref name="r"/>).</summary>
    public int Rank(int layer, string module, int r) => Match(RankPattern, layer, module) is (true, var v) ? v : r;

    public double Alpha(int layer, string module, double alpha) => Match(AlphaPattern, layer, module) is (true, var v) ? v : alpha;

    /// <summary>PEFT's scale of a module's B @ A: alpha / r, or alpha / sqrt(r) with rsLoRA.</summary>
    public double Scaling(int layer, string module, int r, double alpha)
    {
        int rank = Rank(layer, module, r);
        return Alpha(layer, module, alpha) / (UseRsLora ? Math.Sqrt(rank) : rank);
    }

    static (bool, T) Match<T>(IReadOnlyList<(string Key, T Value)> patterns, int layer, string module)
    {
        // The module's name in the base model, as PEFT matches it.
        string name = $"model.layers.{layer}.{TargetModules.Parent(module)}.{module}";
        foreach (var (key, value) in patterns)
            if (Regex.IsMatch(name, $@"^(.*\.)?(?:{key})$", RegexOptions.None, TimeSpan.FromSeconds(1)))
                return (true, value);
        return (false, default!);
    }

    static IEnumerable<KeyValuePair<string, JsonNode?>> Patterns(JsonObject o, string key, string path)
    {
        if (o[key] is null) return [];
        if (o[key] is not JsonObject p) throw JsonFile.Expected(path, key, "an object from module-name pattern to value", o[key]);
        foreach (var (k, _) in p)
        {
            try { _ = new Regex(k, RegexOptions.None, TimeSpan.FromSeconds(1)); }
            catch (ArgumentException) { throw new MolaException($"{path}: {key} key \"{k}\" is not a valid regular expression"); }
        }
        return p;
    }

    static bool IsDefault(JsonNode? n) => n switch
    {
        null => true,
        JsonValue v when v.GetValueKind() == JsonValueKind.False => true,
        JsonArray a => a.Count == 0,
        JsonObject o => o.Count == 0,
        _ => false,
    };
}
