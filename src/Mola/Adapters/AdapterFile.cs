using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// An adapter directory as PEFT lays it out: <c>adapter_config.json</c> beside <c>adapter_model.safetensors</c>,
/// whose tensors carry PEFT's names. The one place that names adapter tensors, reads the config's kind, checks the
/// weights' sizes against the config before anything is allocated, copies them in (names, shapes and finiteness
/// checked) and writes them; the analysis lists a file's expert tensors through it without a base model.
/// </summary>
public static partial class AdapterFile
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    /// <summary>The weights as PEFT writes them with <c>safe_serialization=False</c> (and PEFT before 0.6 always).</summary>
    public const string BinWeightsFile = "adapter_model.bin";

    /// <summary>The adapter's weights file: <see cref="WeightsFile"/>, else <see cref="BinWeightsFile"/> when only that
    /// exists (errors then name the safetensors file).</summary>
    public static string WeightsPath(string dir)
    {
        string path = Path.Combine(dir, WeightsFile), bin = Path.Combine(dir, BinWeightsFile);
        return !File.Exists(path) && File.Exists(bin) ? bin : path;
    }

    /// <summary>Opens a weights file as its name says: a torch <c>.bin</c> or safetensors.</summary>
    static ITensorFile OpenWeights(string path) =>
        path.EndsWith(".bin", StringComparison.Ordinal) ? TorchBinFile.Open(path) : SafeTensorsFile.Open(path);

    /// <summary>A PiSSA adapter's initial factors (<see cref="PissaInit"/>): with the unchanged base they rebuild the residual.</summary>
    public const string PissaFile = "pissa_init.safetensors";

    /// <summary>The PEFT key prefix of an adapted module, e.g. <c>base_model.model.model.layers.3.self_attn.q_proj</c>.</summary>
    public static string Prefix(int layer, string module) => $"base_model.model.model.layers.{layer}.{TargetModules.Parent(module)}.{module}";

    /// <summary>A LoRA A matrix: expert <paramref name="expert"/>'s of a MoLA module, or plain LoRA's one (null).</summary>
    public static string LoraA(string prefix, int? expert = null) => expert is int e ? $"{prefix}.lora_A.{e}.weight" : $"{prefix}.lora_A.weight";

    /// <summary>A LoRA B matrix, named as <see cref="LoraA"/>.</summary>
    public static string LoraB(string prefix, int? expert = null) => expert is int e ? $"{prefix}.lora_B.{e}.weight" : $"{prefix}.lora_B.weight";

    /// <summary>A MoLA module's router.</summary>
    public static string Router(string prefix) => $"{prefix}.router.weight";

    /// <summary>The config file's path, after checking that the directory and the file exist.</summary>
    public static string ConfigPath(string dir)
    {
        if (!Directory.Exists(dir)) throw new MolaException($"{dir}: adapter directory not found");
        string path = Path.Combine(dir, ConfigFile);
        if (!File.Exists(path)) throw new MolaException($"{path}: not found (an adapter directory holds {ConfigFile} and {WeightsFile})");
        return path;
    }

    /// <summary>The adapter kind a config's <c>peft_type</c> names.</summary>
    public static AdapterKind ReadKind(JsonObject config, string path)
    {
        string type = JsonFile.String(config, "peft_type", path) ?? throw new MolaException($"{path}: missing \"peft_type\" (\"MOLA\" or \"LORA\")");
        return type.ToUpperInvariant() switch
        {
            "MOLA" => AdapterKind.Mola,
            "LORA" => AdapterKind.Lora,
            _ => throw new MolaException($"{path}: peft_type \"{type}\" is not supported (expected \"MOLA\" or \"LORA\")"),
        };
    }

    /// <summary>What the analysis reads of a config, leniently (it needs no base model): the kind, and
    /// <c>num_experts</c> when it is a per-layer list (null otherwise; <see cref="AdapterConfig.Load"/> owns the rest).</summary>
    public static (AdapterKind Kind, int[]? NumExperts) ReadKindAndExperts(string path)
    {
        var root = JsonFile.ReadObject(path, "an adapter config with peft_type, target_modules, r, ...");
        var kind = ReadKind(root, path);
        // A single number is LoRA's spelling; the full adapter-config reader owns it.
        int[]? numExperts = root["num_experts"] is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? null
            : JsonFile.IntList(root, "num_experts", path);
        if (numExperts is not null && numExperts.Any(n => n < 1))
            throw new MolaException($"{path}: num_experts entries must be positive integers, got {numExperts.First(n => n < 1)}");
        return (kind, numExperts);
    }

    /// <summary>Each layer's rank and expert count in the config against its first target module's tensors, before
    /// any parameter is allocated: a config typo (r 200000) would otherwise build gigabytes before the shape check.</summary>
    public static void CheckSizes(AdapterConfig config, string configPath, string weightsPath)
    {
        if (config.TargetModules.Length == 0 || !File.Exists(weightsPath)) return;   // Attach and Load say what is wrong
        using var file = OpenWeights(weightsPath);
        bool mola = config.Kind == AdapterKind.Mola;
        for (int l = 0; l < config.Rank.Length; l++)
        {
            string p = Prefix(l, config.TargetModules[0]);
            string a = config.StoredName(LoraA(p, mola ? 0 : null));
            if (!file.Tensors.TryGetValue(a, out var info)) continue;   // Load names what is missing
            if (info.Shape.Length != 2 || info.Shape[0] != config.Rank[l])
                throw new MolaException($"{weightsPath}: tensor \"{a}\" has shape {SafeTensorsFile.FormatShape(info.Shape)}, but {configPath} says r {config.Rank[l]} for layer {l}");
            if (mola && l < config.NumExperts.Length && !file.Tensors.ContainsKey(config.StoredName(LoraA(p, config.NumExperts[l] - 1))))
                throw new MolaException($"{weightsPath}: tensor \"{config.StoredName(LoraA(p, config.NumExperts[l] - 1))}\" missing, but {configPath} says num_experts {config.NumExperts[l]} for layer {l}");
        }
    }

    /// <summary>Copies the tensors of a weights file (safetensors or torch <c>.bin</c>) into <paramref name="destinations"/>
    /// (PEFT name, tensor): every name present, shapes equal, values finite, no tensor the adapter does not have; a
    /// tensor named in <paramref name="scale"/> is multiplied by its factor (<see cref="AdapterConfig.ScaleB"/>);
    /// <paramref name="stored"/> gives a tensor's name in the file where it is not ours (<see cref="AdapterConfig.StoredName"/>).</summary>
    public static void Load(string path, IEnumerable<(string Name, Tensor Tensor)> destinations, IReadOnlyDictionary<string, double>? scale = null,
        Func<string, string>? stored = null)
    {
        using var file = OpenWeights(path);
        var expected = new HashSet<string>();
        using var _ = no_grad();
        foreach (var (ours, dst) in destinations)
        {
            string name = stored?.Invoke(ours) ?? ours;
            expected.Add(name);
            if (!file.Contains(name))
                throw new MolaException($"{path}: tensor \"{name}\" missing (expected shape {SafeTensorsFile.FormatShape(dst.shape)}); the adapter does not fit this base model or config");
            SafeTensorsFile.CheckFits(path, file.Tensors[name], dst, "but this base model and config need");
            // In float64 before the destination's dtype: the scaled B rounds once.
            using var t = file.Read(name, scale?.ContainsKey(ours) == true ? ScalarType.Float64 : dst.dtype);
            SafeTensorsFile.RequireFinite(t, path, name);
            if (scale is not null && scale.TryGetValue(ours, out double factor)) t.mul_(factor);
            dst.copy_(t);
        }
        var extra = file.Tensors.Keys.FirstOrDefault(k => !expected.Contains(k));
        if (extra is not null)
            throw new MolaException($"{path}: unexpected tensor \"{extra}\" ({ConfigFile} does not describe it: wrong layer count, experts or target modules?)");
    }

    /// <summary>Writes <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> into <paramref name="directory"/>.</summary>
    public static void Save(string directory, AdapterConfig config, IEnumerable<(string Name, Tensor Tensor)> tensors)
    {
        Directory.CreateDirectory(directory);
        using var scope = NewDisposeScope();
        var contiguous = tensors.Select(t => new KeyValuePair<string, Tensor>(t.Name, t.Tensor.detach().contiguous())).ToList();
        SafeTensorsFile.Save(Path.Combine(directory, WeightsFile), contiguous, new Dictionary<string, string> { ["format"] = "pt" });
        config.Save(directory);
    }

    /// <summary>Writes the adapter in <paramref name="from"/> (mola's or PEFT's layout, safetensors or <c>.bin</c>) into
    /// <paramref name="to"/> in mola's: the config's per-layer ranks expanded, PEFT's per-module scaling folded into B,
    /// weights as float32 safetensors. Needs no base model: a LoRA's layer count is read from its tensor names.
    /// Returns the config written.</summary>
    public static AdapterConfig Convert(string from, string to, string? topK = null, bool topKWhereMissing = false)
    {
        var config = AdapterConfig.Load(from, topK, topKWhereMissing);
        string configPath = ConfigPath(from), weightsPath = WeightsPath(from);
        if (!File.Exists(weightsPath)) throw new MolaException($"{weightsPath}: not found (an adapter directory holds {ConfigFile} and {WeightsFile} or {BinWeightsFile})");
        int layers = config.NumLayers > 0 ? config.NumLayers : ListModules(weightsPath, null, configPath).Max(m => m.Layer) + 1;   // a uniform-r LoRA
        config = config.ForModel(layers);
        config.Validate(configPath, layers);
        CheckSizes(config, configPath, weightsPath);
        using var scope = NewDisposeScope();
        var tensors = new List<(string Name, Tensor Tensor)>();
        using (var file = OpenWeights(weightsPath))
            foreach (var name in TensorNames(config))
                tensors.Add((name, file.Contains(config.StoredName(name)) ? empty(file.Tensors[config.StoredName(name)].Shape, ScalarType.Float32)
                    : throw new MolaException($"{weightsPath}: tensor \"{config.StoredName(name)}\" missing ({configPath} says the adapter has it)")));
        Load(weightsPath, tensors, config.ScaleB, config.StoredName);
        config = config with { ScaleB = new Dictionary<string, double>(), OriginalMolaNames = false };
        Save(to, config, tensors);
        return config;
    }

    /// <summary>An adapter directory in mola's own layout, for the readers that walk its safetensors by our tensor names
    /// (redundancy, pruning): the directory itself when it is in it (or a LoRA, which those readers refuse by its own
    /// path), else a copy <see cref="Convert"/> writes to a temporary directory, deleted on Dispose.</summary>
    public sealed class OwnLayout : IDisposable
    {
        readonly string? _temporary;

        public string Directory { get; }

        OwnLayout(string directory, string? temporary) => (Directory, _temporary) = (directory, temporary);

        /// <param name="topK">The top-k of an adapter saved by the original MoLA code (<see cref="AdapterConfig.Load"/>).</param>
        public static OwnLayout Of(string directory, string? topK = null, bool topKWhereMissing = false)
        {
            // Our own MoLA layout goes to the readers as it is, which check what they read (leniently: no base model).
            bool safetensors = WeightsPath(directory).EndsWith(WeightsFile, StringComparison.Ordinal);
            if (topK is null && safetensors && ReadKindAndExperts(ConfigPath(directory)).Kind == AdapterKind.Mola) return new OwnLayout(directory, null);
            var config = AdapterConfig.Load(directory, topK, topKWhereMissing);
            if (config.Kind == AdapterKind.Lora || !config.OriginalMolaNames && safetensors) return new OwnLayout(directory, null);
            string temporary = Path.Combine(Path.GetTempPath(), $"mola-adapter-{Guid.NewGuid():N}");
            try { Convert(directory, temporary, topK, topKWhereMissing); }
            catch
            {
                if (System.IO.Directory.Exists(temporary)) System.IO.Directory.Delete(temporary, recursive: true);
                throw;
            }
            return new OwnLayout(temporary, temporary);
        }

        public void Dispose()
        {
            if (_temporary is not null && System.IO.Directory.Exists(_temporary)) System.IO.Directory.Delete(_temporary, recursive: true);
        }
    }

    [GeneratedRegex(@"\.lora_A_(\d+)\.weight$")]
    private static partial Regex OriginalMolaA();

    /// <summary>The experts per layer of an adapter saved by the original MoLA code (GCYZSL/MoLA: its patched PEFT 0.4
    /// names expert e's matrices <c>lora_A_e</c> / <c>lora_B_e</c>, having dropped the adapter name from
    /// <c>lora_A.default_e</c>), counted from the tensors of <paramref name="weightsPath"/>; null when the file is not
    /// in that layout. Every module of a layer must have the same count (the original code gives them one).</summary>
    public static int[]? OriginalMolaExperts(string weightsPath, int layers, string[] targetModules)
    {
        if (!File.Exists(weightsPath)) return null;
        using var file = OpenWeights(weightsPath);
        if (!file.Tensors.Keys.Any(k => OriginalMolaA().IsMatch(k))) return null;
        var experts = new int[layers];
        for (int l = 0; l < layers; l++)
            foreach (var m in targetModules)
            {
                string p = Prefix(l, m) + ".lora_A_";
                int n = file.Tensors.Keys.Count(k => k.StartsWith(p, StringComparison.Ordinal) && OriginalMolaA().IsMatch(k));
                if (n == 0) throw new MolaException($"{weightsPath}: no tensor \"{p}0.weight\" (an adapter of the original MoLA code has experts on every target module of every layer)");
                if (m != targetModules[0] && n != experts[l])
                    throw new MolaException($"{weightsPath}: layer {l} has {experts[l]} experts on {targetModules[0]} but {n} on {m}");
                experts[l] = n;
            }
        return experts;
    }

    /// <summary>A tensor's name in the original MoLA code's files: <c>lora_A.e</c> as <c>lora_A_e</c>, the router in its
    /// ModuleDict as <c>router.router</c>.</summary>
    public static string OriginalMolaName(string name) => name.EndsWith(".router.weight", StringComparison.Ordinal)
        ? name[..^".weight".Length] + ".router.weight"
        : Regex.Replace(name, @"\.lora_([AB])\.(\d+)\.weight$", ".lora_$1_$2.weight");

    /// <summary>The tensor names an adapter of <paramref name="config"/> (expanded to its layers) has.</summary>
    static IEnumerable<string> TensorNames(AdapterConfig config)
    {
        bool mola = config.Kind == AdapterKind.Mola;
        for (int l = 0; l < config.NumLayers; l++)
            foreach (var m in config.TargetModules)
            {
                string p = Prefix(l, m);
                if (!mola)
                {
                    yield return LoraA(p);
                    yield return LoraB(p);
                    continue;
                }
                yield return Router(p);
                for (int e = 0; e < config.NumExperts[l]; e++)
                {
                    yield return LoraA(p, e);
                    yield return LoraB(p, e);
                }
            }
    }

    /// <summary>One adapted module of a file: its prefix and its experts' A and B tensor names, in expert order
    /// (plain LoRA: one expert).</summary>
    public sealed record ModuleTensors(int Layer, string Module, string Prefix, IReadOnlyList<string> A, IReadOnlyList<string> B);

    [GeneratedRegex(@"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([A-Za-z0-9_]+)\.lora_([AB])\.(?:(\d+)\.)?weight$")]
    private static partial Regex LoraTensorName();

    /// <summary>Figures are sized by the largest index: a damaged name must not ask for a billion rows.</summary>
    const int MaxIndex = 9999;

    /// <summary>The LoRA tensors of <paramref name="weightsPath"/> grouped by layer and module, layer order then
    /// module order, every expert numbered from 0 with both matrices; with <paramref name="numExperts"/> (one entry per
    /// layer, from <paramref name="configPath"/>) each module's expert count is checked against it.</summary>
    public static IReadOnlyList<ModuleTensors> ListModules(string weightsPath, int[]? numExperts, string configPath)
    {
        using var file = OpenWeights(weightsPath);
        // (layer, prefix) -> expert -> (A name, B name)
        var found = new SortedDictionary<(int Layer, string Prefix), (string Module, SortedDictionary<int, string> A, SortedDictionary<int, string> B)>();
        foreach (var name in file.Tensors.Keys)
        {
            var m = LoraTensorName().Match(name);
            if (!m.Success) continue;
            if (!int.TryParse(m.Groups[1].Value, out int layer) || layer > MaxIndex)
                throw new MolaException($"{weightsPath}: tensor \"{name}\" names layer {m.Groups[1].Value} (no model has more than {MaxIndex + 1} layers; the file is damaged)");
            string module = m.Groups[3].Value;
            string prefix = $"base_model.model.model.layers.{layer}.{m.Groups[2].Value}.{module}";
            int expert = 0;
            if (m.Groups[5].Success && (!int.TryParse(m.Groups[5].Value, out expert) || expert > MaxIndex))
                throw new MolaException($"{weightsPath}: tensor \"{name}\" names expert {m.Groups[5].Value} (the file is damaged)");
            if (!found.TryGetValue((layer, prefix), out var entry))
                found[(layer, prefix)] = entry = (module, new(), new());
            (m.Groups[4].Value == "A" ? entry.A : entry.B)[expert] = name;
        }
        if (found.Count == 0) throw new MolaException($"{weightsPath}: no LoRA tensors named like base_model.model.model.layers.L.self_attn.q_proj.lora_A.0.weight");

        // num_experts is checked only when it has one entry per layer (the adapter_config contract).
        int layers = found.Keys.Max(k => k.Layer) + 1;
        if (numExperts is not null && numExperts.Length != layers) numExperts = null;
        var modules = new List<ModuleTensors>();
        foreach (var ((layer, prefix), (module, a, b)) in found)
        {
            int experts = Math.Max(a.Count, b.Count);
            for (int e = 0; e < experts; e++)
            {
                if (!a.ContainsKey(e)) throw new MolaException($"{weightsPath}: \"{LoraA(prefix, e)}\" is missing ({experts} experts found for this module, numbered {string.Join(", ", a.Keys)})");
                if (!b.ContainsKey(e)) throw new MolaException($"{weightsPath}: \"{LoraB(prefix, e)}\" is missing ({experts} experts found for this module, numbered {string.Join(", ", b.Keys)})");
            }
            if (numExperts is not null && numExperts[layer] != experts)
                throw new MolaException($"{weightsPath}: layer {layer} {module} has {experts} experts but {configPath} says num_experts[{layer}] = {numExperts[layer]}");
            modules.Add(new ModuleTensors(layer, module, prefix, a.Values.ToList(), b.Values.ToList()));
        }
        modules.Sort((x, y) => x.Layer != y.Layer ? x.Layer.CompareTo(y.Layer) : CompareModules(x.Module, y.Module));
        return modules;
    }

    /// <summary>Module names in the order the paper and PEFT list them (<see cref="TargetModules.All"/>); unknown names follow, sorted.</summary>
    public static int CompareModules(string x, string y)
    {
        int ix = Order(x), iy = Order(y);
        return ix != iy ? ix.CompareTo(iy) : string.CompareOrdinal(x, y);
    }

    static int Order(string module)
    {
        for (int i = 0; i < TargetModules.All.Count; i++)
            if (TargetModules.All[i] == module) return i;
        return TargetModules.All.Count;
    }

    /// <summary>Writes a PiSSA adapter's initial factors (<see cref="PissaInit.Apply"/>'s) beside its weights.</summary>
    public static void SavePissa(string directory, IReadOnlyDictionary<string, Tensor> factors) =>
        SafeTensorsFile.Save(Path.Combine(directory, PissaFile), factors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList(),
            new Dictionary<string, string> { ["format"] = "pt" });

    /// <summary>The initial factors a PiSSA adapter directory stores (finite; <see cref="PissaInit.ApplyResidual"/>
    /// checks that they fit the model), or a clear error when the file is not there.</summary>
    public static Dictionary<string, Tensor> LoadPissa(string directory)
    {
        string path = Path.Combine(directory, PissaFile);
        if (!File.Exists(path))
            throw new MolaException($"{path}: not found ({ConfigFile} says init pissa: the base weights are rebuilt as residuals from the initial factors this file stores)");
        using var file = SafeTensorsFile.Open(path);
        var factors = new Dictionary<string, Tensor>();
        foreach (var name in file.Tensors.Keys)
        {
            file.RequireFinite(name);
            factors[name] = file.Read(name, ScalarType.Float32);
        }
        return factors;
    }
}
