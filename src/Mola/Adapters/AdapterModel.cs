using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// The injector (PEFT's <c>LoraModel</c>): wraps the targeted linear maps of a loaded model with
/// MoLA or LoRA layers through <see cref="Linear.Adapter"/>, keeps the base frozen, exposes only
/// the adapter's parameters, and collects router logits per decoder layer for the balance loss. Adapter
/// directories are read and written by <see cref="AdapterFile"/>.
/// </summary>
public sealed class AdapterModel : nn.Module
{
    public CausalLM Base { get; }
    public AdapterConfig Config { get; private set; }
    /// <summary>A PiSSA adapter's initial factors (<see cref="PissaInit"/>), saved beside its weights; null otherwise.</summary>
    public IReadOnlyDictionary<string, Tensor>? PissaFactors { get; private set; }
    /// <summary>Every adapted module in layer order, then target order.</summary>
    public IReadOnlyList<(int Layer, string Module, Linear Target, IAdapterLayer Adapter)> Modules => _modules;

    readonly List<(int Layer, string Module, Linear Target, IAdapterLayer Adapter)> _modules = new();
    // The layers with a router (MoLA's): their logits make the balance loss.
    readonly List<IRoutedLayer> _routed = new();
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
        config = config.ForModel(model.Config.NumHiddenLayers);
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
                var module = config.NewLayer(l, m, target.InFeatures, target.OutFeatures, model.Device);
                adapter.register_module($"{l}_{m}", (nn.Module)module);
                if (module is IRoutedLayer routed) adapter._routed.Add(routed);
                target.Adapter = module;
                adapter._modules.Add((l, m, target, module));
            }
            foreach (string[] sameInput in SameInput)
            {
                var members = adapter._modules.Where(a => a.Layer == l && sameInput.Contains(a.Module)).Select(a => a.Adapter).OfType<MolaLayer>().ToList();
                if (members.Count < 2) continue;
                var siblings = new MolaSiblings(members);
                foreach (var member in members) member.Siblings = siblings;
            }
        }
        return adapter;
    }

    /// <summary>The modules of a decoder layer that read one input, in the order the layer calls them.</summary>
    static readonly string[][] SameInput = [["q_proj", "k_proj", "v_proj"], ["gate_proj", "up_proj"]];

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

    /// <summary>Loads an adapter directory onto <paramref name="model"/>, checking that it fits; <paramref name="topK"/>
    /// is the top-k of an adapter saved by the original MoLA code (<see cref="AdapterConfig.Load"/>).</summary>
    public static AdapterModel Load(CausalLM model, string directory, string? topK = null, bool topKWhereMissing = false)
    {
        var config = AdapterConfig.Load(directory, topK, topKWhereMissing);
        string cfgPath = Path.Combine(directory, AdapterFile.ConfigFile), weightsPath = AdapterFile.WeightsPath(directory);
        AdapterFile.CheckSizes(config.ForModel(model.Config.NumHiddenLayers), cfgPath, weightsPath);
        var adapter = Attach(model, config, cfgPath);
        try
        {
            // PEFT's per-module scaling is folded into B here, once: a checkpoint saved later holds the folded B.
            AdapterFile.Load(weightsPath, adapter.NamedTensors(), adapter.Config.ScaleB, adapter.Config.StoredName);
            if (config.Pissa) adapter.InitPissa(directory);
        }
        catch
        {
            adapter.DetachFromBase();
            throw;
        }
        adapter.Config = adapter.Config with { ScaleB = new Dictionary<string, double>(), OriginalMolaNames = false };
        return adapter;
    }

    /// <summary>Loads an adapter for inference: dropout off, plain LoRA merged into the base weights.</summary>
    public static AdapterModel LoadForInference(CausalLM model, string directory, string? topK = null)
    {
        var adapter = Load(model, directory, topK);
        if (adapter._routed.Count == 0) adapter.Merge();   // plain LoRA; routing cannot be folded into a weight
        adapter.eval();
        return adapter;
    }

    /// <summary>Adapter tensors under their PEFT names (per-expert slices of the stacked parameters).</summary>
    public IEnumerable<(string Name, Tensor Tensor)> NamedTensors()
    {
        foreach (var (l, m, _, module) in _modules)
            foreach (var t in module.PeftTensors(AdapterFile.Prefix(l, m)))
                yield return t;
    }

    /// <summary>Copies adapter tensors from a safetensors or <c>.bin</c> file (names, shapes and finiteness checked; extra tensors refused).</summary>
    public void LoadWeights(string path) => AdapterFile.Load(path, NamedTensors());

    /// <summary>Writes <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> into <paramref name="directory"/>,
    /// and a PiSSA adapter's initial factors (<see cref="AdapterFile.PissaFile"/>).</summary>
    public void Save(string directory)
    {
        if (Config.Pissa && PissaFactors is null)
            throw new MolaException($"{directory}: a PiSSA adapter is saved only after its initialisation (InitPissa)");
        AdapterFile.Save(directory, Config, NamedTensors());
        if (PissaFactors is not null) AdapterFile.SavePissa(directory, PissaFactors);
    }

    /// <summary>PiSSA (<see cref="PissaInit"/>): with no <paramref name="factorsDirectory"/>, every expert starts from the
    /// base weights' top singular triplets and the base becomes the residual; with one (a saved adapter or checkpoint),
    /// the residual is rebuilt from the factors stored there, on the unchanged base checkpoint. The experts' own weights
    /// are left as they are in that case (loaded from the same directory).</summary>
    /// <param name="progress">The decomposition's progress (<see cref="PissaInit.Apply"/>).</param>
    public void InitPissa(string? factorsDirectory = null, Action<int, int>? progress = null)
    {
        if (PissaFactors is not null) throw new MolaException("the PiSSA residual is already applied to this base model");
        if (factorsDirectory is null) PissaFactors = PissaInit.Apply(this, progress);
        else
        {
            var factors = AdapterFile.LoadPissa(factorsDirectory);
            PissaInit.ApplyResidual(this, factors, Path.Combine(factorsDirectory, AdapterFile.PissaFile));
            PissaFactors = factors;
        }
        Config = Config with { Pissa = true };
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
        foreach (var (_, _, target, module) in _modules) module.Merge(target);
    }

    public void Unmerge()
    {
        foreach (var (_, _, target, module) in _modules) module.Unmerge(target);
    }

    /// <summary>Routes every MoLA layer through the faithful per-expert loop (true) or the fast path.</summary>
    public void UseLoopPath(bool on)
    {
        foreach (var routed in _routed) routed.UseLoopPath = on;
    }

    /// <summary>How every adapted module's products compute over a bfloat16/float16 base (mixed, the default, or float32).</summary>
    public void SetPrecision(AdapterPrecision precision)
    {
        foreach (var (_, _, _, module) in _modules) module.Precision = precision;
    }

    /// <summary>Sets (or clears) the routing statistics hook on every MoLA layer.</summary>
    public void SetRoutingObserver(IRoutingObserver? observer)
    {
        foreach (var routed in _routed) routed.Observer = observer;
    }

    /// <summary>Whether the routed layers hand over their router logits (a forward pass with labels): their sink is set
    /// only then, so that other passes make no logits tensor for nobody (decoding's one-token path made 154 a 1.1B token,
    /// ~3 ms; bench/NOTES.md).</summary>
    bool Collect
    {
        get => _collect;
        set
        {
            _collect = value;
            foreach (var routed in _routed) routed.RouterLogitsSink = value ? CollectRouterLogits : null;
        }
    }

    void CollectRouterLogits(IRoutedLayer layer, Tensor logits)
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
        bool wantAux = labels is not null && _routed.Count > 0;
        Collect = wantAux;
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
            Collect = false;
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
        bool wantAux = _routed.Count > 0;
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
                Collect = wantAux;
                var output = layers[l].Forward(input, ctx);
                Collect = false;
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
            Collect = false;
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
