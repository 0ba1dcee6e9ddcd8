using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Models;

namespace Mola.Adapters;

/// <summary><c>adapter_config.json</c>: PEFT's fields plus MoLA's per-layer experts and top-k.
/// Per-layer values are stored expanded (one entry per decoder layer).</summary>
public sealed record AdapterConfig
{
    public required AdapterKind Kind { get; init; }
    public string BaseModelNameOrPath { get; init; } = "";
    public required string[] TargetModules { get; init; }
    /// <summary>LoRA rank per layer.</summary>
    public required int[] Rank { get; init; }
    public double LoraAlpha { get; init; } = AdapterSpec.Paper.Alpha;
    public double LoraDropout { get; init; } = AdapterSpec.Paper.Dropout;
    /// <summary>Experts per layer (MoLA); 1 for LoRA.</summary>
    public int[] NumExperts { get; init; } = [];
    /// <summary>Experts each token is routed to, per layer (MoLA).</summary>
    public int[] TopK { get; init; } = [];
    public double AuxLossCoef { get; init; } = AdapterSpec.Paper.AuxLossCoef;
    /// <summary>How an automatic allocation was derived (<c>"allocation"</c>: method, total, beta, layer alpha,
    /// budget, parameter count); kept as written, null for a fixed spec.</summary>
    public JsonObject? Allocation { get; init; }
    /// <summary><c>"init": "pissa"</c>: the experts started from the base weights' top singular triplets and the base
    /// is replaced by its residual, rebuilt on load from <see cref="AdapterFile.PissaFile"/> (<see cref="PissaInit"/>).
    /// False (no key, or <c>"lora"</c>): B = 0 and the base as it is.</summary>
    public bool Pissa { get; init; }
    /// <summary><c>"pissa_iterations"</c>: the subspace iterations of the randomized SVD that gave the PiSSA factors, 0 for
    /// the exact SVD (also what an adapter without the key used). A record of how they were made: a load rebuilds the
    /// residual from the stored factors and never decomposes again.</summary>
    public int PissaIterations { get; init; }

    public int NumLayers => Rank.Length;

    public double Scaling(int layer) => LoraAlpha / Rank[layer];

    /// <summary>Exact trainable-parameter counts of this adapter on <paramref name="model"/>.</summary>
    public ParameterCounts CountParameters(ModelConfig model) => Kind == AdapterKind.Mola
        ? ParameterCount.Mola(model, NumExperts, TopK, Rank, TargetModules)
        : ParameterCount.Lora(model, Rank, TargetModules);

    /// <summary>The layer this adapter puts on module <paramref name="module"/> of decoder layer <paramref name="layer"/>,
    /// freshly initialised (B = 0).</summary>
    public IAdapterLayer NewLayer(int layer, string module, int inFeatures, int outFeatures, TorchSharp.torch.Device device) => Kind == AdapterKind.Mola
        ? new MolaLayer(layer, module, inFeatures, outFeatures, NumExperts[layer], TopK[layer], Rank[layer], LoraAlpha, LoraDropout, device)
        : new LoraLayer(layer, module, inFeatures, outFeatures, Rank[layer], LoraAlpha, LoraDropout, device);

    /// <summary>Checks the lists against each other and against the base model's layer count.</summary>
    public void Validate(string source, int? modelLayers = null)
    {
        if (TargetModules.Length == 0) throw new MolaException($"{source}: target_modules is empty");
        foreach (var m in TargetModules)
            if (!Adapters.TargetModules.All.Contains(m))
                throw new MolaException($"{source}: unknown target module \"{m}\" (expected some of {string.Join(", ", Adapters.TargetModules.All)})");
        if (modelLayers is int n && Rank.Length != n)
            throw new MolaException($"{source}: the adapter has {Rank.Length} layers but the base model has {n}");
        for (int l = 0; l < Rank.Length; l++)
            if (Rank[l] < 1) throw new MolaException($"{source}: r must be at least 1 (layer {l} has {Rank[l]})");
        if (LoraDropout is < 0 or >= 1 or double.NaN) throw new MolaException($"{source}: lora_dropout must be in [0, 1)");
        if (!double.IsFinite(LoraAlpha)) throw new MolaException($"{source}: lora_alpha must be a finite number, got {LoraAlpha}");
        if (!double.IsFinite(AuxLossCoef) || AuxLossCoef < 0) throw new MolaException($"{source}: aux_loss_coef must be a finite number of 0 or more, got {AuxLossCoef}");
        if (Pissa && Kind != AdapterKind.Mola) throw new MolaException($"{source}: init pissa applies to MoLA adapters (peft_type MOLA)");
        if (PissaIterations < 0) throw new MolaException($"{source}: pissa_iterations is {PissaIterations}, expected 0 (the exact SVD) or more");
        if (Kind != AdapterKind.Mola) return;
        if (NumExperts.Length != Rank.Length || TopK.Length != Rank.Length)
            throw new MolaException($"{source}: num_experts ({NumExperts.Length}), top_k ({TopK.Length}) and r ({Rank.Length}) must have one entry per layer");
        for (int l = 0; l < Rank.Length; l++)
        {
            if (NumExperts[l] < 1) throw new MolaException($"{source}: num_experts must be at least 1 (layer {l} has {NumExperts[l]})");
            if (TopK[l] < 1 || TopK[l] > NumExperts[l])
                throw new MolaException($"{source}: top_k of layer {l} is {TopK[l]} but that layer has {NumExperts[l]} experts (need 1 <= top_k <= experts)");
        }
    }

    /// <param name="topK">Experts per token (a per-layer spec) for an adapter saved by the original MoLA code, which
    /// records none; refused for any other adapter, unless <paramref name="topKWhereMissing"/> (several adapters
    /// given one top-k, as serve's: it applies to those that record none).</param>
    public static AdapterConfig Load(string directory, string? topK = null, bool topKWhereMissing = false)
    {
        string path = AdapterFile.ConfigPath(directory);
        var o = JsonFile.ReadObject(path, "an adapter config with peft_type, target_modules, r, ...");
        var kind = AdapterFile.ReadKind(o, path);
        var targets = o["target_modules"] switch
        {
            JsonArray a => a.Select(x => JsonFile.StringOf(x, "target_modules", path, "a list of module names")).ToArray(),
            // PEFT reads a single string as a regular expression over full module names; one module's name is ours.
            JsonValue v when v.GetValueKind() == JsonValueKind.String => Adapters.TargetModules.All.Contains(v.GetValue<string>()) ? [v.GetValue<string>()]
                : throw new MolaException($"{path}: target_modules is the regular expression \"{v.GetValue<string>()}\", which mola does not match; list the module names instead (e.g. [\"q_proj\", \"v_proj\"])"),
            _ => throw new MolaException($"{path}: missing \"target_modules\" (a list of module names)"),
        };
        var peft = PeftConfig.Read(o, path);
        if (peft is not null && kind == AdapterKind.Mola)
            throw new MolaException($"{path}: use_rslora, rank_pattern, alpha_pattern and layers_to_transform apply to peft_type LORA only");
        var rankNode = o["r"] ?? throw new MolaException($"{path}: missing \"r\"");
        int layers = kind == AdapterKind.Mola ? IntList(o, "num_experts", path).Length : (rankNode is JsonArray ra ? ra.Count : 0);
        int[] rank = rankNode is JsonArray ? IntList(o, "r", path) : Enumerable.Repeat(JsonFile.IntValue(rankNode, "r", path), Math.Max(layers, 0)).ToArray();
        var cfg = new AdapterConfig
        {
            Kind = kind,
            BaseModelNameOrPath = JsonFile.String(o, "base_model_name_or_path", path) ?? "",
            TargetModules = targets,
            Rank = rank,
            LoraAlpha = JsonFile.Number(o, "lora_alpha", path) ?? 8,
            LoraDropout = JsonFile.Number(o, "lora_dropout", path) ?? 0,
            NumExperts = kind == AdapterKind.Mola ? IntList(o, "num_experts", path) : [],
            TopK = kind == AdapterKind.Mola ? IntList(o, "top_k", path) : [],
            AuxLossCoef = JsonFile.Number(o, "aux_loss_coef", path) ?? 0,
            UniformRank = rankNode is not JsonArray ? JsonFile.IntValue(rankNode, "r", path) : null,
            Peft = peft,
            Source = path,
            Allocation = o["allocation"] switch
            {
                null => null,
                JsonObject a => (JsonObject)a.DeepClone(),
                var other => throw JsonFile.Expected(path, "allocation", "an object (how the allocation was derived)", other),
            },
            Pissa = (JsonFile.String(o, "init", path) ?? "lora") switch
            {
                "lora" => false,
                "pissa" => true,
                var other => throw new MolaException($"{path}: init \"{other}\" is not supported (expected \"lora\" or \"pissa\")"),
            },
            PissaIterations = JsonFile.Int(o, "pissa_iterations", path) ?? 0,
        };
        if (kind == AdapterKind.Lora && rankNode is JsonArray && peft is null
            && AdapterFile.OriginalMolaExperts(AdapterFile.WeightsPath(directory), rank.Length, targets) is int[] experts)
        {
            // GCYZSL/MoLA writes peft_type LORA with a per-layer r; its scripts take the experts and top-k on the command line.
            if (topK is null)
                throw new MolaException($"{AdapterFile.WeightsPath(directory)}: an adapter saved by the original MoLA code (experts named lora_A_<e>), which records no top_k; " +
                    $"give it with --top-k K (one value or one per layer, as the original's scripts took it), or write the adapter in mola's format once with: " +
                    $"mola convert-adapter --adapter {directory} --output DIR --top-k K");
            cfg = cfg with
            {
                Kind = AdapterKind.Mola,
                NumExperts = experts,
                TopK = ExpertAllocation.Parse(topK, rank.Length, "--top-k"),
                AuxLossCoef = AdapterSpec.Paper.AuxLossCoef,
                OriginalMolaNames = true,
            };
        }
        else if (topK is not null && !topKWhereMissing)
            throw new MolaException($"--top-k: {path} records its own top-k (or is a LoRA); --top-k is for adapters saved by the original MoLA code");
        cfg.Validate(path);
        return cfg;
    }

    /// <summary>Tensors are named as the original MoLA code saves them (<see cref="AdapterFile.OriginalMolaName"/>).</summary>
    internal bool OriginalMolaNames { get; init; }

    /// <summary>A tensor's name in this adapter's weights file, given ours.</summary>
    public string StoredName(string name) => OriginalMolaNames ? AdapterFile.OriginalMolaName(name) : name;

    /// <summary>A LoRA config with a single <c>r</c> has no layer count of its own; it takes the model's.</summary>
    internal int? UniformRank { get; init; }

    /// <summary>PEFT's keys that need the layer count (<see cref="ForModel"/> applies them); null when none is set.</summary>
    internal PeftConfig? Peft { get; init; }

    /// <summary>The file this config was read from, for <see cref="ForModel"/>'s errors.</summary>
    internal string Source { get; init; } = "adapter";

    /// <summary>By tensor name, the factor a lora_B read from the file is multiplied by: PEFT's per-module scaling
    /// (rsLoRA, alpha_pattern) over this config's alpha / r, so that the adapter computes what PEFT's did. Not saved:
    /// a saved adapter holds the scaled B.</summary>
    public IReadOnlyDictionary<string, double> ScaleB { get; init; } = new Dictionary<string, double>();

    public AdapterConfig ForModel(int layers)
    {
        var config = Rank.Length == 0 && UniformRank is int r ? this with { Rank = Enumerable.Repeat(r, layers).ToArray() } : this;
        return config.Peft is null ? config : config.ApplyPeft(layers);
    }

    /// <summary>Maps PEFT's per-module rank and alpha onto this config: one rank per layer (a layer whose modules PEFT
    /// gave different ranks is refused), each module's scaling kept through <see cref="ScaleB"/>.</summary>
    AdapterConfig ApplyPeft(int layers)
    {
        var peft = Peft!;
        if (peft.LayersToTransform is int[] only && Enumerable.Range(0, layers).FirstOrDefault(l => !only.Contains(l), -1) is int skipped and >= 0)
            throw new MolaException($"{Source}: layers_to_transform leaves layer {skipped} without LoRA, but a mola adapter covers every layer (expected null or all {layers} layers)");
        var rank = new int[layers];
        var scale = new Dictionary<string, double>();
        for (int l = 0; l < layers; l++)
        {
            int r = l < Rank.Length ? Rank[l] : UniformRank ?? 0;
            var ranks = TargetModules.Select(m => (Module: m, Rank: peft.Rank(l, m, r))).ToList();
            if (ranks.FirstOrDefault(x => x.Rank != ranks[0].Rank) is { Module: not null } other)
                throw new MolaException($"{Source}: rank_pattern gives layer {l} {ranks[0].Module} r {ranks[0].Rank} but {other.Module} r {other.Rank}; a mola adapter has one rank per layer");
            rank[l] = ranks[0].Rank;
            foreach (var m in TargetModules)
            {
                double factor = peft.Scaling(l, m, r, LoraAlpha) / (LoraAlpha / rank[l]);
                if (factor != 1) scale[AdapterFile.LoraB(AdapterFile.Prefix(l, m))] = factor;
            }
        }
        return this with { Rank = rank, UniformRank = null, Peft = null, ScaleB = scale };
    }

    public void Save(string directory)
    {
        var o = new JsonObject
        {
            ["peft_type"] = Kind == AdapterKind.Mola ? "MOLA" : "LORA",
            ["base_model_name_or_path"] = BaseModelNameOrPath,
            ["target_modules"] = new JsonArray(TargetModules.Select(m => (JsonNode)m!).ToArray()),
            // PEFT reads an int r for LoRA; MoLA's r is per layer.
            ["r"] = Kind == AdapterKind.Lora && Rank.Distinct().Count() == 1 ? Rank[0] : ToJson(Rank),
            ["lora_alpha"] = LoraAlpha,
            ["lora_dropout"] = LoraDropout,
        };
        if (Kind == AdapterKind.Mola)
        {
            o["num_experts"] = ToJson(NumExperts);
            o["top_k"] = ToJson(TopK);
            o["aux_loss_coef"] = AuxLossCoef;
            if (Allocation is not null) o["allocation"] = Allocation.DeepClone();
            if (Pissa)
            {
                o["init"] = "pissa";
                o["pissa_iterations"] = PissaIterations;
            }
        }
        o["bias"] = "none";
        o["task_type"] = "CAUSAL_LM";
        File.WriteAllText(Path.Combine(directory, AdapterFile.ConfigFile), o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    static JsonArray ToJson(int[] values) => new(values.Select(v => (JsonNode)v!).ToArray());

    static int[] IntList(JsonObject o, string key, string path) => o[key] switch
    {
        null => throw new MolaException($"{path}: missing \"{key}\" (a list with one value per layer)"),
        JsonArray => JsonFile.IntList(o, key, path)!,
        var other => throw JsonFile.Expected(path, key, "a list with one value per layer", other),
    };
}
