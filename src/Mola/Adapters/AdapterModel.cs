using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>Logits and losses of one forward pass. Losses are null when no labels were given.</summary>
public sealed record LmOutput(Tensor Logits, Tensor? CeLoss, Tensor? AuxLoss, Tensor? Loss) : IDisposable
{
    public void Dispose()
    {
        Logits.Dispose();
        CeLoss?.Dispose();
        AuxLoss?.Dispose();
        Loss?.Dispose();
    }
}

/// <summary>
/// The injector (PEFT's <c>LoraModel</c>): wraps the targeted linear maps of a loaded model with
/// MoLA or LoRA layers through <see cref="Linear.Adapter"/>, keeps the base frozen, exposes only
/// the adapter's parameters, collects router logits per decoder layer for the balance loss, and
/// reads and writes adapter directories (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>).
/// </summary>
public sealed class AdapterModel : nn.Module
{
    public const string WeightsFile = "adapter_model.safetensors";

    public CausalLM Base { get; }
    public AdapterConfig Config { get; }
    /// <summary>Every adapted module in layer order, then target order.</summary>
    public IReadOnlyList<(int Layer, string Module, Linear Target, nn.Module Adapter)> Modules => _modules;

    readonly List<(int Layer, string Module, Linear Target, nn.Module Adapter)> _modules = new();
    readonly List<Tensor>[] _routerLogits;
    bool _collect;

    AdapterModel(CausalLM model, AdapterConfig config) : base("adapter")
    {
        Base = model;
        Config = config;
        _routerLogits = Enumerable.Range(0, model.Config.NumHiddenLayers).Select(_ => new List<Tensor>()).ToArray();
    }

    /// <summary>Attaches a freshly initialised adapter (B = 0: the model's outputs are unchanged).</summary>
    public static AdapterModel Attach(CausalLM model, AdapterConfig config, string source = "adapter")
    {
        config = config.ForModel(model.Config.NumHiddenLayers, source);
        config.Validate(source, model.Config.NumHiddenLayers);
        foreach (var p in model.parameters()) p.requires_grad = false;
        var adapter = new AdapterModel(model, config);
        var layers = model.model.layers;
        for (int l = 0; l < config.NumLayers; l++)
        {
            foreach (var m in TargetModules.All.Where(config.TargetModules.Contains))
            {
                var target = Target(layers[l], m);
                if (target.Adapter is not null)
                    throw new MolaException($"{source}: layer {l} {m} already has an adapter attached");
                nn.Module module = config.Kind == AdapterKind.Mola
                    ? new MolaLayer(l, m, target.InFeatures, target.OutFeatures, config.NumExperts[l], config.TopK[l], config.Rank[l], config.LoraAlpha, config.LoraDropout, model.Device)
                    : new LoraLayer(l, m, target.InFeatures, target.OutFeatures, config.Rank[l], config.LoraAlpha, config.LoraDropout, model.Device);
                adapter.register_module($"{l}_{m}", module);
                if (module is MolaLayer mola) mola.RouterLogitsSink = adapter.CollectRouterLogits;
                target.Adapter = (ILinearAdapter)module;
                adapter._modules.Add((l, m, target, module));
            }
        }
        return adapter;
    }

    static Linear Target(DecoderLayer layer, string module) => module switch
    {
        "q_proj" => layer.self_attn.q_proj,
        "k_proj" => layer.self_attn.k_proj,
        "v_proj" => layer.self_attn.v_proj,
        "o_proj" => layer.self_attn.o_proj,
        "gate_proj" => layer.mlp.gate_proj,
        "up_proj" => layer.mlp.up_proj,
        "down_proj" => layer.mlp.down_proj,
        _ => throw new MolaException($"unknown target module \"{module}\""),
    };

    /// <summary>Loads an adapter directory onto <paramref name="model"/>, checking that it fits.</summary>
    public static AdapterModel Load(CausalLM model, string directory)
    {
        if (!Directory.Exists(directory)) throw new MolaException($"{directory}: adapter directory not found");
        var config = AdapterConfig.Load(directory);
        string cfgPath = Path.Combine(directory, "adapter_config.json");
        CheckSizesBeforeBuilding(config.ForModel(model.Config.NumHiddenLayers, cfgPath), cfgPath, Path.Combine(directory, WeightsFile));
        var adapter = Attach(model, config, cfgPath);
        try
        {
            adapter.LoadWeights(Path.Combine(directory, WeightsFile));
        }
        catch
        {
            adapter.DetachFromBase();
            throw;
        }
        return adapter;
    }

    /// <summary>Each layer's rank and expert count in the config against its first target module's tensors, before
    /// any parameter is allocated: a config typo (r 200000) would otherwise build gigabytes before the shape check.</summary>
    static void CheckSizesBeforeBuilding(AdapterConfig config, string cfgPath, string weightsPath)
    {
        if (config.TargetModules.Length == 0 || !File.Exists(weightsPath)) return;   // Attach and LoadWeights say what is wrong
        using var file = SafeTensorsFile.Open(weightsPath);
        for (int l = 0; l < config.Rank.Length; l++)
        {
            string p = AdapterConfig.Prefix(l, config.TargetModules[0]);
            bool mola = config.Kind == AdapterKind.Mola;
            string a = mola ? $"{p}.lora_A.0.weight" : $"{p}.lora_A.weight";
            if (!file.Tensors.TryGetValue(a, out var info)) continue;   // LoadWeights names what is missing
            if (info.Shape.Length != 2 || info.Shape[0] != config.Rank[l])
                throw new MolaException($"{weightsPath}: tensor \"{a}\" has shape {SafeTensorsFile.FormatShape(info.Shape)}, but {cfgPath} says r {config.Rank[l]} for layer {l}");
            if (mola && l < config.NumExperts.Length && !file.Tensors.ContainsKey($"{p}.lora_A.{config.NumExperts[l] - 1}.weight"))
                throw new MolaException($"{weightsPath}: tensor \"{p}.lora_A.{config.NumExperts[l] - 1}.weight\" missing, but {cfgPath} says num_experts {config.NumExperts[l]} for layer {l}");
        }
    }

    /// <summary>Loads an adapter for inference: dropout off, plain LoRA merged into the base weights.</summary>
    public static AdapterModel LoadForInference(CausalLM model, string directory)
    {
        var adapter = Load(model, directory);
        if (adapter.Config.Kind == AdapterKind.Lora) adapter.Merge();
        adapter.eval();
        return adapter;
    }

    /// <summary>Adapter tensors under their PEFT names (per-expert slices of the stacked parameters).</summary>
    public IEnumerable<(string Name, Tensor Tensor)> NamedTensors()
    {
        foreach (var (l, m, _, module) in _modules)
        {
            string p = AdapterConfig.Prefix(l, m);
            if (module is MolaLayer mola)
            {
                yield return ($"{p}.router.weight", mola.router);
                for (int e = 0; e < mola.NumExperts; e++)
                {
                    yield return ($"{p}.lora_A.{e}.weight", mola.ExpertA(e));
                    yield return ($"{p}.lora_B.{e}.weight", mola.ExpertB(e));
                }
            }
            else if (module is LoraLayer lora)
            {
                yield return ($"{p}.lora_A.weight", lora.lora_A);
                yield return ($"{p}.lora_B.weight", lora.lora_B);
            }
        }
    }

    /// <summary>Copies adapter tensors from a safetensors file (names and shapes checked; extra tensors refused).</summary>
    public void LoadWeights(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        var expected = new HashSet<string>();
        foreach (var (name, dst) in NamedTensors())
        {
            expected.Add(name);
            if (!file.Contains(name))
                throw new MolaException($"{path}: tensor \"{name}\" missing (expected shape {SafeTensorsFile.FormatShape(dst.shape)}); the adapter does not fit this base model or config");
            file.ReadInto(name, dst, "but this base model and config need");
        }
        var extra = file.Tensors.Keys.FirstOrDefault(k => !expected.Contains(k));
        if (extra is not null)
            throw new MolaException($"{path}: unexpected tensor \"{extra}\" (adapter_config.json does not describe it: wrong layer count, experts or target modules?)");
    }

    /// <summary>Writes <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> into <paramref name="directory"/>.</summary>
    public void Save(string directory)
    {
        Directory.CreateDirectory(directory);
        using var scope = NewDisposeScope();
        var tensors = NamedTensors().Select(t => new KeyValuePair<string, Tensor>(t.Name, t.Tensor.detach().contiguous())).ToList();
        SafeTensorsFile.Save(Path.Combine(directory, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        Config.Save(directory);
    }

    /// <summary>Removes the adapter from the base model (the base is left as it was, LoRA unmerged).</summary>
    public void DetachFromBase()
    {
        foreach (var (_, _, target, module) in _modules)
        {
            if (module is LoraLayer lora) lora.Unmerge(target);
            target.Adapter = null;
        }
    }

    /// <summary>Folds plain LoRA into the base weights for fast inference.</summary>
    public void Merge()
    {
        if (Config.Kind != AdapterKind.Lora) throw new MolaException("only LoRA adapters can be merged (a MoLA adapter routes per token)");
        foreach (var (_, _, target, module) in _modules) ((LoraLayer)module).Merge(target);
    }

    public void Unmerge()
    {
        foreach (var (_, _, target, module) in _modules)
            if (module is LoraLayer lora) lora.Unmerge(target);
    }

    /// <summary>Routes every MoLA layer through the faithful per-expert loop (true) or the fast path.</summary>
    public void UseLoopPath(bool on)
    {
        foreach (var (_, _, _, module) in _modules)
            if (module is MolaLayer mola) mola.UseLoopPath = on;
    }

    /// <summary>Sets (or clears) the routing statistics hook on every MoLA layer.</summary>
    public void SetRoutingObserver(IRoutingObserver? observer)
    {
        foreach (var (_, _, _, module) in _modules)
            if (module is MolaLayer mola) mola.Observer = observer;
    }

    void CollectRouterLogits(MolaLayer layer, Tensor logits)
    {
        if (_collect) _routerLogits[layer.Layer].Add(logits.alias().DetachFromDisposeScope());
    }

    /// <summary>
    /// Logits, and with <paramref name="labels"/> the losses: mean next-token CE (label -100 ignored),
    /// the unscaled balance loss summed over layers, and <c>CE + aux_loss_coef * aux</c>.
    /// </summary>
    public LmOutput Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? labels = null)
    {
        bool wantAux = labels is not null && Config.Kind == AdapterKind.Mola;
        _collect = wantAux;
        try
        {
            using var scope = NewDisposeScope();
            var logits = Base.Forward(inputIds, attentionMask);
            if (labels is null) return new LmOutput(logits.MoveToOuterDisposeScope(), null, null, null);
            var ce = Losses.CausalLm(logits, labels);
            var aux = wantAux ? AuxLoss(attentionMask) : zeros(1, ScalarType.Float32, Base.Device).sum();
            var total = Config.AuxLossCoef != 0 ? ce + aux * Config.AuxLossCoef : ce.alias();
            return new LmOutput(logits.MoveToOuterDisposeScope(), ce.MoveToOuterDisposeScope(), aux.MoveToOuterDisposeScope(), total.MoveToOuterDisposeScope());
        }
        finally
        {
            _collect = false;
            foreach (var list in _routerLogits)
            {
                foreach (var t in list) t.Dispose();
                list.Clear();
            }
        }
    }

    Tensor AuxLoss(Tensor? attentionMask)
    {
        using var scope = NewDisposeScope();
        var total = zeros(1, ScalarType.Float32, Base.Device).sum();
        Tensor? tokenMask = attentionMask?.reshape(-1).to(ScalarType.Bool, Base.Device);
        for (int l = 0; l < _routerLogits.Length; l++)
        {
            var list = _routerLogits[l];
            if (list.Count == 0) continue;
            var all = cat(list, 0);
            var mask = tokenMask is null ? null : tokenMask.repeat(list.Count);
            total = total + LoadBalancing.LayerLoss(all, Config.NumExperts[l], Config.TopK[l], mask);
        }
        return total.MoveToOuterDisposeScope();
    }
}
