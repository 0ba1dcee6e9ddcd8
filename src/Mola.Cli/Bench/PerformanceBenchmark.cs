using System.Diagnostics;
using Mola.Adapters;
using Mola.Generation;
using Mola.Models;
using Mola.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Cli.Bench;

/// <summary>Shapes and repetitions of <c>mola bench</c>. The layer shapes follow the issue's reference case
/// (one 4096 x 4096 linear, 512 tokens, 8 experts, top-2, rank 8); the decoder is a small LLaMA-shaped model.</summary>
public sealed record BenchOptions
{
    public int Tokens { get; init; } = 512;
    public int Hidden { get; init; } = 4096;
    public int Experts { get; init; } = 8;
    public int TopK { get; init; } = 2;
    public int Rank { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    /// <summary>LoRA dropout of every adapter (layer and step). 0 measures the adapter arithmetic alone.</summary>
    public double Dropout { get; init; }
    public int StepLayers { get; init; } = 4;
    public int StepHidden { get; init; } = 1024;
    public int StepTokens { get; init; } = 512;
    /// <summary>Small on purpose: in a 32-layer 7B model the head is ~2% of the weights; a full 32000-token head
    /// on a 4-layer toy would be 40% of its step and hide the adapters' cost.</summary>
    public int Vocab { get; init; } = 1024;
    /// <summary>Experts per layer of the MoLA step (the paper's inverted triangle by default).</summary>
    public string Allocation { get; init; } = "2468";
    public int GenerateTokens { get; init; } = 32;
    public int PromptTokens { get; init; } = 16;
    public int Warmup { get; init; } = 2;
    public int Rounds { get; init; } = 7;
    public int StepRounds { get; init; } = 5;
    public long Seed { get; init; } = 1234;
    /// <summary>Intra-op threads of libtorch; 0 leaves its default (one per core).</summary>
    public int Threads { get; init; }
    public Clock Clock { get; init; } = Clock.Wall;

    /// <summary>Small shapes, few repetitions and one thread (two threads on two busy cores can wait on each
    /// other for seconds at such small sizes): a smoke run that finishes in seconds.</summary>
    public static BenchOptions Quick => new()
    {
        Tokens = 128,
        Hidden = 512,
        StepLayers = 2,
        StepHidden = 256,
        StepTokens = 128,
        Vocab = 512,
        Allocation = "2,4",
        GenerateTokens = 8,
        PromptTokens = 8,
        Warmup = 1,
        Rounds = 3,
        StepRounds = 2,
        Threads = 1,
    };

    public void Validate()
    {
        void Positive(int v, string flag)
        {
            if (v < 1) throw new MolaException($"{flag} must be at least 1, got {v}");
        }
        Positive(Tokens, "--tokens");
        Positive(Hidden, "--hidden");
        Positive(Experts, "--experts");
        Positive(Rank, "--rank");
        Positive(StepLayers, "--step-layers");
        Positive(StepHidden, "--step-hidden");
        Positive(StepTokens, "--step-tokens");
        Positive(Vocab, "--vocab");
        Positive(GenerateTokens, "--generate-tokens");
        Positive(Rounds, "--rounds");
        if (Threads < 0) throw new MolaException($"--threads must be 0 (libtorch's default) or more, got {Threads}");
        if (TopK < 1 || TopK > Experts) throw new MolaException($"--top-k must be between 1 and --experts ({Experts}), got {TopK}");
        if (Dropout is < 0 or >= 1) throw new MolaException($"--dropout must be in [0, 1), got {Dropout}");
        if (StepTokens < 2) throw new MolaException($"--step-tokens must be at least 2 (the loss predicts the next token), got {StepTokens}");
        if (StepHidden % 2 != 0) throw new MolaException($"--step-hidden must be even (rotary embeddings), got {StepHidden}");
        var experts = ExpertAllocation.ParseExperts(Allocation, StepLayers, "--allocation");
        if (experts.Any(e => e < TopK))
            throw new MolaException($"--allocation {Allocation}: every layer needs at least --top-k ({TopK}) experts");
        CheckFitsInMemory(experts);
    }

    /// <summary>Refuses shapes whose tensors cannot fit in memory, before libtorch tries. The layer benchmark holds the
    /// hidden x hidden weight (and a random copy of it), four adapters and some 16 activations of tokens x hidden, all
    /// float32; the step benchmark what <see cref="MemoryPlan"/> plans for its decoder.</summary>
    void CheckFitsInMemory(int[] experts)
    {
        long layerBytes;
        try { layerBytes = checked(4L * Hidden * Hidden * 2 + 4L * 4 * (Experts + 1) * Rank * 2 * Hidden + 4L * 16 * Tokens * Hidden); }
        catch (OverflowException) { layerBytes = long.MaxValue; }
        MemoryPlan.EnsureFits(layerBytes, $"the layer benchmark (--hidden {Hidden}, --tokens {Tokens}, --experts {Experts}, --rank {Rank})", "smaller shapes");
        var config = PerformanceBenchmark.DecoderConfig(this);
        var counts = ParameterCount.Mola(config, experts, [.. experts.Select(_ => TopK)], [.. experts.Select(_ => Rank)], TargetModules.All);
        var step = MemoryPlan.Estimate(config, counts, ScalarType.Float32, 1, StepTokens, gradientCheckpointing: false, Dropout);
        MemoryPlan.EnsureFits(step.TotalBytes,
            $"the training-step benchmark (--step-layers {StepLayers}, --step-hidden {StepHidden}, --step-tokens {StepTokens}, --vocab {Vocab})", "smaller shapes");
    }
}

public sealed record LayerTimes(double FrozenMs, double LoraMs, double MolaMs, double MolaLoopMs);
public sealed record StepTimes(double FrozenMs, double LoraMs, double MolaMs, double TokensPerSecond);
public sealed record BenchShapes(int Tokens, int Hidden, int Experts, int TopK, int Rank, double Dropout,
    int StepLayers, int StepHidden, int StepIntermediate, int StepTokens, int Vocab, int[] StepExperts, int Threads);
public sealed record BenchReport(LayerTimes Layer, StepTimes Step, double MatmulGflops, double GenerateTokensPerSecond,
    BenchShapes Shapes, Clock Clock, IReadOnlyDictionary<string, double> PairedRatios, ProductFloor Floor);

/// <summary>One matrix product (or pass) of a layer timed alone: median milliseconds and the floating-point
/// operations it does (0 for the dX add, which is a memory pass).</summary>
public sealed record OpTime(string Name, double Ms, double Flop)
{
    public double Gflops => Flop / (Ms / 1000) / 1e9;
}

/// <summary>
/// The frozen layer's two products (forward, dX) and the batched MoLA path's six extra products plus the dX
/// accumulation, each timed alone in the layout autograd gives it. The floor of that formulation is the frozen
/// layer as measured plus MoLA's extra products: whatever a MoLA layer costs above it is routing, glue and
/// autograd, which is what an optimisation can still win; below it only a different formulation (or a fused
/// kernel) can go. Measured like everything here, so it moves with the run-to-run spread.
/// </summary>
public sealed record ProductFloor(IReadOnlyList<OpTime> Frozen, IReadOnlyList<OpTime> Mola, double LayerFrozenMs)
{
    public double FrozenProductsMs => Frozen.Sum(o => o.Ms);
    public double MolaExtraMs => Mola.Sum(o => o.Ms);
    public double FloorMs => LayerFrozenMs + MolaExtraMs;
    public double FloorRatio => FloorMs / LayerFrozenMs;
}

/// <summary>
/// What <c>mola bench</c> measures, all in one process so that every ratio compares runs under the same load:
/// one adapted linear (forward + backward), a whole training step of a small decoder, the float32 matmul
/// rate and generation speed with the KV cache. Weights are random; only shapes matter for speed.
/// </summary>
public static class PerformanceBenchmark
{
    public static BenchReport Run(BenchOptions o, Action<string>? log = null)
    {
        o.Validate();
        log ??= _ => { };
        if (o.Threads > 0) torch.set_num_threads(o.Threads);
        torch.manual_seed(o.Seed);
        using var _ = NewDisposeScope();

        log($"matmul rate ({o.Tokens} x {o.Hidden} x {o.Hidden})...");
        double gflops = MatmulGflops(o.Tokens, o.Hidden, Math.Max(3, o.Rounds), o.Clock);
        log($"layer: {o.Hidden} x {o.Hidden}, {o.Tokens} tokens, {o.Experts} experts, top-{o.TopK}, rank {o.Rank}...");
        var (layer, layerRatios) = Layer(o);
        log("layer products one by one...");
        var floor = Floor(o, layer.FrozenMs);
        var config = DecoderConfig(o);
        var allocation = ExpertAllocation.ParseExperts(o.Allocation, o.StepLayers, "--allocation");
        log($"step: {o.StepLayers} layers, hidden {o.StepHidden}, {o.StepTokens} tokens, MoLA {string.Join(",", allocation)}...");
        var (step, stepRatios, generate) = StepAndGenerate(o, config, allocation, log);

        var ratios = layerRatios.Concat(stepRatios).ToDictionary(kv => kv.Key, kv => kv.Value);
        var shapes = new BenchShapes(o.Tokens, o.Hidden, o.Experts, o.TopK, o.Rank, o.Dropout,
            o.StepLayers, o.StepHidden, config.IntermediateSize, o.StepTokens, o.Vocab, allocation, torch.get_num_threads());
        return new BenchReport(layer, step, gflops, generate, shapes, o.Clock, ratios, floor);
    }

    /// <summary>float32 GFLOP/s of the frozen layer's own product, [N, D] x [D, D].</summary>
    public static double MatmulGflops(int n, int d, int repeats, Clock clock = Clock.Wall)
    {
        using var scope = NewDisposeScope();
        var a = randn(n, d);
        var b = randn(d, d);
        var t = Timing.Interleaved([("matmul", () => { using var c = a.matmul(b); })], 1, repeats, clock)[0];
        return 2.0 * n * d * d / (t.Median / 1000) / 1e9;
    }

    static (LayerTimes, Dictionary<string, double>) Layer(BenchOptions o)
    {
        using var scope = NewDisposeScope();
        int D = o.Hidden;
        var baseLayer = new Models.Linear("base", D, D, ScalarType.Float32, CPU);
        var lora = new LoraLayer(0, "q_proj", D, D, o.Rank, o.Alpha, o.Dropout, CPU);
        var mola = new MolaLayer(0, "q_proj", D, D, o.Experts, o.TopK, o.Rank, o.Alpha, o.Dropout, CPU);
        var loop = new MolaLayer(0, "q_proj", D, D, o.Experts, o.TopK, o.Rank, o.Alpha, o.Dropout, CPU) { UseLoopPath = true };
        using (no_grad())
        {
            baseLayer.weight.copy_(randn(D, D) / Math.Sqrt(D));
            // B is zero at initialisation; a trained adapter's is not, and the work is the same either way.
            lora.lora_B.copy_(randn(D, o.Rank) * 0.01);
            mola.lora_B.copy_(randn(D, (long)o.Experts * o.Rank) * 0.01);
            loop.router.copy_(mola.router);
            loop.lora_A.copy_(mola.lora_A);
            loop.lora_B.copy_(mola.lora_B);
        }
        var x0 = randn(1, o.Tokens, D);
        var upstream = randn(1, o.Tokens, D);

        // Forward + backward with the input requiring grad, so every variant computes dX as inside a model.
        Action Run(Func<Tensor, Tensor> forward, nn.Module? adapter) => () =>
        {
            using var s = NewDisposeScope();
            var x = x0.detach().requires_grad_(true);
            var y = forward(x);
            y.backward([upstream]);
            adapter?.zero_grad();
        };
        var times = Timing.Interleaved(
        [
            ("frozen", Run(baseLayer.Base, null)),
            ("lora", Run(x => lora.Forward(x, baseLayer), lora)),
            ("mola", Run(x => mola.Forward(x, baseLayer), mola)),
            ("mola_loop", Run(x => loop.Forward(x, baseLayer), loop)),
        ], o.Warmup, o.Rounds, o.Clock);
        var ratios = new Dictionary<string, double>
        {
            ["layer_mola_over_frozen"] = Timing.PairedRatio(times[2], times[0]),
            ["layer_mola_over_lora"] = Timing.PairedRatio(times[2], times[1]),
            ["layer_lora_over_frozen"] = Timing.PairedRatio(times[1], times[0]),
            ["layer_mola_loop_over_frozen"] = Timing.PairedRatio(times[3], times[0]),
        };
        return (new LayerTimes(times[0].Median, times[1].Median, times[2].Median, times[3].Median), ratios);
    }

    /// <summary>The products of <see cref="Layer"/>'s frozen and MoLA variants timed one by one at the same shapes
    /// (N tokens, D x D, c = E + E*r router and expert rows, q = E*r expert columns).</summary>
    static ProductFloor Floor(BenchOptions o, double layerFrozenMs)
    {
        using var scope = NewDisposeScope();
        long n = o.Tokens, d = o.Hidden, q = (long)o.Experts * o.Rank, c = o.Experts + q;
        var x = randn(n, d);
        var g = randn(n, d);
        var w = randn(d, d);
        var routerAndA = randn(c, d);   // [R; A], as the fast path multiplies it
        var bT = randn(q, d);           // B^T, contiguous as the fast path makes it
        var h = randn(n, q);
        var dh = randn(n, c);
        var y = randn(n, d);
        var dx = randn(n, d);
        double Flop(long m, long k, long cols) => 2.0 * m * k * cols;
        Action Product(Func<Tensor> f) => () => { using var t = f(); };
        var ops = new (string Name, double Flop, Action Run)[]
        {
            ("frozen: x W^T", Flop(n, d, d), Product(() => x.mm(w.t()))),
            ("frozen: g W (dX)", Flop(n, d, d), Product(() => g.mm(w))),
            ("x [R;A]^T", Flop(n, d, c), Product(() => x.mm(routerAndA.t()))),
            ("y += h B^T", Flop(n, q, d), () => y.addmm_(h, bT)),
            ("g B (dh)", Flop(n, d, q), Product(() => g.mm(bT.t()))),
            ("h^T g (dB)", Flop(q, n, d), Product(() => h.t().mm(g))),
            ("dh^T x (d[R;A])", Flop(c, n, d), Product(() => dh.t().mm(x))),
            ("dh [R;A] (dX)", Flop(n, c, d), Product(() => dh.mm(routerAndA))),
            ("dX + dX (accumulate)", 0, Product(() => dx + y)),
        };
        var times = Timing.Interleaved(ops.Select(op => (op.Name, op.Run)).ToList(), o.Warmup, o.Rounds, o.Clock);
        var all = ops.Zip(times, (op, t) => new OpTime(op.Name, t.Median, op.Flop)).ToList();
        return new ProductFloor(all.Take(2).ToList(), all.Skip(2).ToList(), layerFrozenMs);
    }

    /// <summary>A LLaMA-shaped decoder: heads of 128 (64 when the hidden size is small), the MLP 2.6875 x wide
    /// as LLaMA-7B's (11008 / 4096), rounded to a multiple of 64.</summary>
    public static ModelConfig DecoderConfig(BenchOptions o)
    {
        int headDim = o.StepHidden % 128 == 0 ? 128 : o.StepHidden % 64 == 0 ? 64 : o.StepHidden;
        int intermediate = Math.Max(64, (int)Math.Round(o.StepHidden * 2.6875 / 64) * 64);
        return new ModelConfig
        {
            ModelType = "llama",
            VocabSize = o.Vocab,
            HiddenSize = o.StepHidden,
            IntermediateSize = intermediate,
            NumHiddenLayers = o.StepLayers,
            NumAttentionHeads = o.StepHidden / headDim,
            NumKeyValueHeads = o.StepHidden / headDim,
            HeadDim = headDim,
            RmsNormEps = 1e-5,
        };
    }

    static (StepTimes, Dictionary<string, double>, double) StepAndGenerate(BenchOptions o, ModelConfig config, int[] allocation, Action<string> log)
    {
        using var scope = NewDisposeScope();
        using var model = new CausalLM(config, ScalarType.Float32, CPU);
        using (no_grad())
        {
            foreach (var p in model.parameters())
                p.copy_(p.dim() == 1 ? ones_like(p) : randn_like(p) / Math.Sqrt(p.shape[^1]));
        }
        string[] all = [.. TargetModules.All];
        var loraConfig = new AdapterConfig { Kind = AdapterKind.Lora, TargetModules = all, Rank = Fill(o.Rank, o.StepLayers), LoraAlpha = o.Alpha, LoraDropout = o.Dropout };
        var molaConfig = loraConfig with { Kind = AdapterKind.Mola, NumExperts = allocation, TopK = Fill(o.TopK, o.StepLayers) };
        var lora = AdapterModel.Attach(model, loraConfig, "bench");
        lora.DetachFromBase();
        var mola = AdapterModel.Attach(model, molaConfig, "bench");
        mola.DetachFromBase();
        foreach (var adapter in new[] { lora, mola })
        {
            using var _ = no_grad();
            foreach (var p in adapter.parameters().Where(p => p.abs().max().item<float>() == 0))
                p.copy_(randn_like(p) * 0.01);   // B: make the adapters' outputs count, as after training
        }

        // The same backward graph for all three: gradients flow down to the embeddings (the frozen step
        // would otherwise have nothing to compute), so the variants differ only by the adapter. The table
        // is small (--vocab), so its gradient costs next to nothing.
        var embeddings = model.model.embed_tokens;
        embeddings.weight.requires_grad = true;
        var ids = randint(config.VocabSize, [1, o.StepTokens], dtype: ScalarType.Int64);
        var labels = randint(config.VocabSize, [1, o.StepTokens], dtype: ScalarType.Int64);
        using var loraOptimizer = new AdamW(lora.parameters(), 1e-4);
        using var molaOptimizer = new AdamW(mola.parameters(), 1e-4);

        Action Step(AdapterModel? adapter, AdamW? optimizer) => () =>
        {
            Use(adapter);
            using var s = NewDisposeScope();
            if (adapter is null)
            {
                var logits = model.Forward(ids);
                Losses.CausalLm(logits, labels).backward();
            }
            else
            {
                adapter.train();
                using var output = adapter.Forward(ids, null, labels);
                output.Loss!.backward();
                optimizer!.ClipGradNorm(1.0);
                optimizer.Step();
                optimizer.ZeroGrad();
            }
            embeddings.zero_grad();
        };
        void Use(AdapterModel? adapter)
        {
            foreach (var a in new[] { lora, mola })
                foreach (var m in a.Modules) m.Target.Adapter = null;
            if (adapter is not null)
                foreach (var m in adapter.Modules) m.Target.Adapter = m.Adapter;
        }

        var times = Timing.Interleaved(
        [
            ("frozen", Step(null, null)),
            ("lora", Step(lora, loraOptimizer)),
            ("mola", Step(mola, molaOptimizer)),
        ], Math.Min(o.Warmup, 1), o.StepRounds, o.Clock);
        var ratios = new Dictionary<string, double>
        {
            ["step_mola_over_frozen"] = Timing.PairedRatio(times[2], times[0]),
            ["step_mola_over_lora"] = Timing.PairedRatio(times[2], times[1]),
            ["step_lora_over_frozen"] = Timing.PairedRatio(times[1], times[0]),
        };
        var step = new StepTimes(times[0].Median, times[1].Median, times[2].Median, o.StepTokens / (times[2].Median / 1000));

        log($"generation: {o.PromptTokens}-token prompt, {o.GenerateTokens} new tokens, MoLA adapter, KV cache...");
        Use(mola);
        mola.eval();
        embeddings.weight.requires_grad = false;
        var prompt = Enumerable.Range(0, o.PromptTokens).Select(i => 3 + i % (config.VocabSize - 3)).ToList();
        // EOS -1 never comes, so every run generates exactly the number of tokens asked for.
        var options = new GenerationOptions { MaxNewTokens = o.GenerateTokens };
        TextGenerator.Generate(model, [prompt], options with { MaxNewTokens = Math.Min(4, o.GenerateTokens) }, eosId: -1);
        var gen = Timing.Interleaved([("generate", () => TextGenerator.Generate(model, [prompt], options, eosId: -1))], 0, Math.Max(1, o.StepRounds / 2), o.Clock);
        Use(null);
        return (step, ratios, o.GenerateTokens / (gen[0].Median / 1000));
    }

    static int[] Fill(int value, int count) => Enumerable.Repeat(value, count).ToArray();
}
