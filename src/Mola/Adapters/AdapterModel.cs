using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Adapters;

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
    public IReadOnlyList<(int Layer, string Module, Linear Target, IAdapterLayer Adapter)> Modules => _modules;

    readonly List<(int Layer, string Module, Linear Target, IAdapterLayer Adapter)> _modules = new();
    readonly List<Tensor>[] _routerLogits;
    // Each layer's expert count and top-k, as its MoLA modules report them with their logits (the balance loss's E and k).
    readonly (int Experts, int TopK)[] _routing;
    bool _collect;

    AdapterModel(CausalLM model, AdapterConfig config) : base("adapter")
    {
        Base = model;
        Config = config;
        _routerLogits = Enumerable.Range(0, model.Config.NumHiddenLayers).Select(_ => new List<Tensor>()).ToArray();
        _routing = new (int, int)[model.Config.NumHiddenLayers];
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
                target.Adapter = (IAdapterLayer)module;
                adapter._modules.Add((l, m, target, (IAdapterLayer)module));
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
            foreach (var t in module.PeftTensors(AdapterConfig.Prefix(l, m)))
                yield return t;
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
            module.Unmerge(target);
            target.Adapter = null;
        }
    }

    /// <summary>Folds plain LoRA into the base weights for fast inference.</summary>
    public void Merge()
    {
        if (Config.Kind != AdapterKind.Lora) throw new MolaException("only LoRA adapters can be merged (a MoLA adapter routes per token)");
        foreach (var (_, _, target, module) in _modules) module.Merge(target);
    }

    public void Unmerge()
    {
        foreach (var (_, _, target, module) in _modules) module.Unmerge(target);
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
        if (!_collect) return;
        _routerLogits[layer.Layer].Add(logits.alias().DetachFromDisposeScope());
        _routing[layer.Layer] = (layer.NumExperts, layer.TopK);
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
            for (int l = 0; l < _routerLogits.Length; l++) ClearRouterLogits(l);
        }
    }

    Tensor AuxLoss(Tensor? attentionMask)
    {
        using var scope = NewDisposeScope();
        var total = zeros(1, ScalarType.Float32, Base.Device).sum();
        Tensor? tokenMask = TokenMask(attentionMask);
        for (int l = 0; l < _routerLogits.Length; l++)
            if (LayerAuxLoss(l, tokenMask) is { } layerLoss) total = total + layerLoss;
        return total.MoveToOuterDisposeScope();
    }

    Tensor? TokenMask(Tensor? attentionMask) => attentionMask?.reshape(-1).to(ScalarType.Bool, Base.Device);

    /// <summary>Layer <paramref name="l"/>'s balance loss over the router logits its modules handed in; null when none did.</summary>
    Tensor? LayerAuxLoss(int l, Tensor? tokenMask)
    {
        var list = _routerLogits[l];
        if (list.Count == 0) return null;
        using var scope = NewDisposeScope();
        var all = cat(list, 0);
        var mask = tokenMask is null ? null : tokenMask.repeat(list.Count);
        var (experts, topK) = _routing[l];
        return LoadBalancing.LayerLoss(all, experts, topK, mask).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Forward and backward of <c>ceWeight * CE + auxWeight * aux</c> with gradient checkpointing: only each
    /// decoder layer's input is kept from the forward pass; the backward pass recomputes one layer at a time from
    /// its input, with the RNG state of its first forward put back so that dropout draws the same masks (routing
    /// reads the input before dropout, so it is the same too), and carries the gradient of the layer's output, plus
    /// that of its own balance loss, to its input. Activation memory is then the layer inputs plus one layer's graph
    /// instead of every layer's graph. The first forward runs without autograd but in the adapters' training layout
    /// (<see cref="TrainingLayout.Force"/>), so that it takes the very code path, and rounding, of the recompute (the
    /// adapters pick their product layout by whether a backward follows); the balance loss is counted once, in the recompute. Gradients equal those of
    /// <see cref="Forward"/> + backward, and the RNG ends where that leaves it (both tested). Returns the CE and
    /// the balance loss (detached), as <see cref="Forward"/> computes them.
    /// </summary>
    /// <param name="ceWeight">Weight of the CE in the loss; 0 leaves it out (a micro-batch with nothing to predict).</param>
    public (Tensor Ce, Tensor Aux) CheckpointedBackward(Tensor inputIds, Tensor? attentionMask, Tensor labels, double ceWeight, double auxWeight)
    {
        bool dropout = Config.LoraDropout > 0 && training;
        if (dropout && Base.Device.type != DeviceType.CPU)
            throw new MolaException("gradient checkpointing with dropout needs the CPU device here: only the CPU generator's state is replayed " +
                "in the recompute (set the dropout to 0, or train without gradient checkpointing)");
        bool wantAux = Config.Kind == AdapterKind.Mola;
        var layers = Base.model.layers;
        int L = layers.Count;
        using var scope = NewDisposeScope();
        var ctx = Base.Context(inputIds, attentionMask);
        var tokenMask = wantAux ? TokenMask(attentionMask) : null;

        // Forward: keep each layer's input and the RNG state it started from.
        var inputs = new Tensor[L];
        var rng = new Tensor[L];
        var x = Base.Embed(inputIds).detach();
        using (no_grad())
        using (TrainingLayout.Force())   // the recompute's code path, so its rounding, without building a graph
        {
            for (int l = 0; l < L; l++)
            {
                inputs[l] = x;
                rng[l] = random.get_rng_state();
                using var layerScope = NewDisposeScope();
                x = layers[l].Forward(x, ctx).MoveToOuterDisposeScope();
            }
        }
        var rngAfter = random.get_rng_state();

        // The head: final norm, logits and CE, with the gradient they send into the last layer's output.
        Tensor ce, grad;
        using (var headScope = NewDisposeScope())
        {
            var top = x.requires_grad_(true);
            ce = Losses.CausalLm(Base.Head(top), labels);
            if (ceWeight != 0) (ce * ceWeight).backward();
            grad = (top.grad ?? zeros_like(top)).MoveToOuterDisposeScope();
            ce = ce.detach().MoveToOuterDisposeScope();
        }
        x.Dispose();

        // Backward, last layer first: recompute, then back-propagate into the layer's input.
        var layerAux = new Tensor?[L];
        try
        {
            for (int l = L - 1; l >= 0; l--)
            {
                using var layerScope = NewDisposeScope();
                random.set_rng_state(rng[l]);
                var input = l > 0 ? inputs[l].requires_grad_(true) : inputs[l];   // the embeddings are frozen
                _collect = wantAux;
                var output = layers[l].Forward(input, ctx);
                _collect = false;
                var roots = new List<Tensor> { output };
                var grads = new List<Tensor> { grad };
                if (wantAux && LayerAuxLoss(l, tokenMask) is { } aux)
                {
                    layerAux[l] = aux.detach().MoveToOuterDisposeScope();
                    if (auxWeight != 0 && aux.requires_grad)
                    {
                        roots.Add(aux * auxWeight);
                        grads.Add(ones_like(aux));
                    }
                }
                ClearRouterLogits(l);
                if (output.requires_grad) autograd.backward(roots, grads);
                // The gradient handle outlives its input, whose memory goes now: kept activations shrink as we go down.
                grad.Dispose();
                if (l > 0) grad = (input.grad ?? zeros_like(input)).MoveToOuterDisposeScope();
                inputs[l].Dispose();
            }
        }
        finally
        {
            _collect = false;
            for (int l = 0; l < L; l++) ClearRouterLogits(l);
            random.set_rng_state(rngAfter);
        }

        // The balance loss summed in layer order from zero, exactly as AuxLoss adds it up.
        var total = zeros(1, ScalarType.Float32, Base.Device).sum();
        foreach (var aux in layerAux)
            if (aux is not null) total = total + aux;
        return (ce.MoveToOuterDisposeScope(), total.MoveToOuterDisposeScope());
    }

    void ClearRouterLogits(int l)
    {
        foreach (var t in _routerLogits[l]) t.Dispose();
        _routerLogits[l].Clear();
    }
}
