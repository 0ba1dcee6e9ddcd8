using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Mola.Models;

namespace Mola.Analysis;

/// <summary>
/// The little of an adapter directory that the analysis needs: its peft_type and, for each layer and
/// adapted module, the names of its expert tensors. Kept small and internal on purpose, so it can be
/// swapped for the full adapter-config class without touching the analysis.
/// </summary>
internal sealed partial class AdapterTensors
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>The order the paper and PEFT list modules in; unknown names follow, sorted.</summary>
    static readonly string[] ModuleOrder = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>One adapted module: the tensor-name prefix and its experts' A and B tensor names, in expert order.</summary>
    public sealed record Module(int Layer, string Name, string Prefix, IReadOnlyList<string> A, IReadOnlyList<string> B);

    public string Directory { get; }
    public string PeftType { get; }
    public IReadOnlyList<Module> Modules { get; }

    AdapterTensors(string directory, string peftType, IReadOnlyList<Module> modules)
    {
        Directory = directory;
        PeftType = peftType;
        Modules = modules;
    }

    [GeneratedRegex(@"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([A-Za-z0-9_]+)\.lora_([AB])\.(?:(\d+)\.)?weight$")]
    private static partial Regex LoraTensorName();

    /// <summary>Reads <c>adapter_config.json</c> for the peft_type and the expert counts, and lists the
    /// expert tensors of <c>adapter_model.safetensors</c> grouped by layer and module.</summary>
    const int MaxLayerIndex = 9999;

    public static AdapterTensors Read(string dir)
    {
        string configPath = ConfigPath(dir);
        var (peftType, numExperts) = ReadConfig(configPath);

        string weightsPath = Path.Combine(dir, WeightsFile);
        using var file = SafeTensorsFile.Open(weightsPath);
        // (layer, prefix) -> expert -> (A name, B name)
        var found = new SortedDictionary<(int Layer, string Prefix), (string Module, SortedDictionary<int, string> A, SortedDictionary<int, string> B)>();
        foreach (var name in file.Tensors.Keys)
        {
            var m = LoraTensorName().Match(name);
            if (!m.Success) continue;
            // Figures are sized by the largest index: a damaged name must not ask for a billion rows.
            if (!int.TryParse(m.Groups[1].Value, out int layer) || layer > MaxLayerIndex)
                throw new MolaException($"{weightsPath}: tensor \"{name}\" names layer {m.Groups[1].Value} (no model has more than {MaxLayerIndex + 1} layers; the file is damaged)");
            string module = m.Groups[3].Value;
            string prefix = $"base_model.model.model.layers.{layer}.{m.Groups[2].Value}.{module}";
            int expert = 0;
            if (m.Groups[5].Success && (!int.TryParse(m.Groups[5].Value, out expert) || expert > MaxLayerIndex))
                throw new MolaException($"{weightsPath}: tensor \"{name}\" names expert {m.Groups[5].Value} (the file is damaged)");
            if (!found.TryGetValue((layer, prefix), out var entry))
                found[(layer, prefix)] = entry = (module, new(), new());
            (m.Groups[4].Value == "A" ? entry.A : entry.B)[expert] = name;
        }
        if (found.Count == 0) throw new MolaException($"{weightsPath}: no LoRA tensors named like base_model.model.model.layers.L.self_attn.q_proj.lora_A.0.weight");

        // num_experts is checked only when it has one entry per layer (the adapter_config contract);
        // the full adapter-config reader owns the other spellings.
        int layers = found.Keys.Max(k => k.Layer) + 1;
        if (numExperts is not null && numExperts.Length != layers) numExperts = null;
        var modules = new List<Module>();
        foreach (var ((layer, prefix), (module, a, b)) in found)
        {
            int experts = Math.Max(a.Count, b.Count);
            for (int e = 0; e < experts; e++)
            {
                if (!a.ContainsKey(e)) throw new MolaException($"{weightsPath}: \"{prefix}.lora_A.{e}.weight\" is missing ({experts} experts found for this module, numbered {string.Join(", ", a.Keys)})");
                if (!b.ContainsKey(e)) throw new MolaException($"{weightsPath}: \"{prefix}.lora_B.{e}.weight\" is missing ({experts} experts found for this module, numbered {string.Join(", ", b.Keys)})");
            }
            if (numExperts is not null && numExperts[layer] != experts)
                throw new MolaException($"{weightsPath}: layer {layer} {module} has {experts} experts but {configPath} says num_experts[{layer}] = {numExperts[layer]}");
            modules.Add(new Module(layer, module, prefix, a.Values.ToList(), b.Values.ToList()));
        }
        modules.Sort((x, y) => x.Layer != y.Layer ? x.Layer.CompareTo(y.Layer) : CompareModules(x.Name, y.Name));
        return new AdapterTensors(dir, peftType, modules);
    }

    /// <summary>The config file's path, after checking that the directory and the file exist.</summary>
    public static string ConfigPath(string dir)
    {
        if (!System.IO.Directory.Exists(dir)) throw new MolaException($"{dir}: adapter directory not found");
        string configPath = Path.Combine(dir, ConfigFile);
        if (!File.Exists(configPath)) throw new MolaException($"{configPath}: not found (an adapter directory holds {ConfigFile} and {WeightsFile})");
        return configPath;
    }

    public static int CompareModules(string x, string y)
    {
        int ix = Array.IndexOf(ModuleOrder, x), iy = Array.IndexOf(ModuleOrder, y);
        if (ix < 0) ix = ModuleOrder.Length;
        if (iy < 0) iy = ModuleOrder.Length;
        return ix != iy ? ix.CompareTo(iy) : string.CompareOrdinal(x, y);
    }

    /// <summary>peft_type (required) and num_experts when it is a per-layer list (null otherwise).</summary>
    public static (string PeftType, int[]? NumExperts) ReadConfig(string path)
    {
        var root = JsonFile.ReadObject(path, "an adapter config with peft_type, target_modules, r, ...");
        string? type = root["peft_type"] is null ? null : JsonFile.String(root, "peft_type", path);
        if (type is null) throw new MolaException($"{path}: missing \"peft_type\" (\"MOLA\" or \"LORA\")");
        string peftType = type.ToUpperInvariant();
        if (peftType is not ("MOLA" or "LORA"))
            throw new MolaException($"{path}: peft_type \"{type}\" is not supported (expected \"MOLA\" or \"LORA\")");
        // A single number is LoRA's spelling; the full adapter-config reader owns it.
        int[]? numExperts = root["num_experts"] is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.Number ? null
            : JsonFile.IntList(root, "num_experts", path);
        if (numExperts is not null && numExperts.Any(n => n < 1))
            throw new MolaException($"{path}: num_experts entries must be positive integers, got {numExperts.First(n => n < 1)}");
        return (peftType, numExperts);
    }
}
