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
    /// <summary>Tokens of the prompt whose prefill (one forward pass into an empty KV cache, no adapter) is timed.</summary>
    public int PrefillTokens { get; init; } = 512;
    /// <summary>Timed rounds of decoding and prefill; the variants (base, MoLA, and llama.cpp with <see cref="Against"/>)
    /// alternate round by round.</summary>
    public int DecodeRounds { get; init; } = 3;
    /// <summary>"llama.cpp": decode and prefill the same weights with llama.cpp too (<see cref="LlamaCppRun"/>), alternating.</summary>
    public string? Against { get; init; }
    /// <summary>A real model shape (<see cref="ModelShapes.All"/>) for the step and decoding benchmarks, random
    /// weights made in memory; the layer benchmark and its products are then skipped (they do not depend on it).</summary>
    public string? Shape { get; init; }
    /// <summary>Base-model dtypes of the step and decoding benchmarks, one after the other (adapter weights stay float32).</summary>
    public IReadOnlyList<ScalarType> DTypes { get; init; } = [ScalarType.Float32];
    /// <summary>The adapters' products over a bfloat16/float16 base in the step and decoding benchmarks (as <c>mola train</c>'s).</summary>
    public AdapterPrecision AdapterPrecision { get; init; } = AdapterPrecision.Mixed;
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
        PrefillTokens = 32,
        DecodeRounds = 1,
    };

    /// <summary>Defaults for <c>--shape</c>: a few steps of fewer tokens (a 1.1B step takes seconds and gigabytes),
    /// float32 and bfloat16.</summary>
    public static BenchOptions ForShape(string shape) => new()
    {
        Shape = shape,
        StepTokens = 256,
        StepRounds = 2,
        Warmup = 1,
        DTypes = [ScalarType.Float32, ScalarType.BFloat16],
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
        if (GenerateTokens < 2) throw new MolaException($"--generate-tokens {GenerateTokens}: expected at least 2 (decoding is timed after the first token)");
        Positive(PrefillTokens, "--prefill-tokens");
        Positive(DecodeRounds, "--decode-rounds");
        if (Against is not (null or "llama.cpp")) throw new MolaException($"--against {Against}: expected llama.cpp");
        if (Shape is not null && !ModelShapes.All.ContainsKey(Shape))
            throw new MolaException($"--shape {Shape}: unknown shape (known: {string.Join(", ", ModelShapes.All.Keys)})");
        Positive(Rounds, "--rounds");
        if (Threads < 0) throw new MolaException($"--threads must be 0 (libtorch's default) or more, got {Threads}");
        if (TopK < 1 || TopK > Experts) throw new MolaException($"--top-k must be between 1 and --experts ({Experts}), got {TopK}");
        if (Dropout is < 0 or >= 1) throw new MolaException($"--dropout must be in [0, 1), got {Dropout}");
        if (StepTokens < 2) throw new MolaException($"--step-tokens must be at least 2 (the loss predicts the next token), got {StepTokens}");
        if (StepHidden % 2 != 0) throw new MolaException($"--step-hidden must be even (rotary embeddings), got {StepHidden}");
        var experts = ExpertAllocation.ParseExperts(Allocation, PerformanceBenchmark.DecoderConfig(this).NumHiddenLayers, "--allocation");
        if (experts.Any(e => e < TopK))
            throw new MolaException($"--allocation {Allocation}: every layer needs at least --top-k ({TopK}) experts");
        CheckFitsInMemory(experts);
    }

    /// <summary>Refuses shapes whose tensors cannot fit in memory, before libtorch tries. The layer benchmark holds the
    /// hidden x hidden weight (and a random copy of it), four adapters and some 16 activations of tokens x hidden, all
    /// float32; the step benchmark what <see cref="MemoryPlan"/> plans for its decoder.</summary>
    void CheckFitsInMemory(int[] experts)
    {
        long layerBytes = 0;
        if (Shape is null)
        {
            try { layerBytes = checked(4L * Hidden * Hidden * 2 + 4L * 4 * (Experts + 1) * Rank * 2 * Hidden + 4L * 16 * Tokens * Hidden); }
            catch (OverflowException) { layerBytes = long.MaxValue; }
        }
        MemoryPlan.EnsureFits(layerBytes, $"the layer benchmark (--hidden {Hidden}, --tokens {Tokens}, --experts {Experts}, --rank {Rank})", "smaller shapes");
        var config = PerformanceBenchmark.DecoderConfig(this);
        var counts = ParameterCount.Mola(config, experts, [.. experts.Select(_ => TopK)], [.. experts.Select(_ => Rank)], TargetModules.All);
        var step = MemoryPlan.Estimate(config, counts, ScalarType.Float32, 1, StepTokens, gradientCheckpointing: false, Dropout);
        MemoryPlan.EnsureFits(step.TotalBytes,
            Shape is null ? $"the training-step benchmark (--step-layers {StepLayers}, --step-hidden {StepHidden}, --step-tokens {StepTokens}, --vocab {Vocab})"
                : $"the training-step benchmark (--shape {Shape}, --step-tokens {StepTokens})", "smaller shapes");
    }
}

public sealed record LayerTimes(double FrozenMs, double LoraMs, double MolaMs, double MolaLoopMs);

/// <summary>Matrix-product operations of one training step of each variant (<see cref="ModelFlop.Step"/>), and of one
/// run of the matmul-rate variant timed in the same rounds.</summary>
public sealed record StepFlop(double Frozen, double Lora, double Mola, double Matmul);

/// <summary>Milliseconds of each timed round of the step benchmark, per variant; round i of each ran in the same turn
/// of the rotation.</summary>
public sealed record StepRounds(IReadOnlyList<double> Frozen, IReadOnlyList<double> Lora, IReadOnlyList<double> Mola, IReadOnlyList<double> Matmul);

/// <summary>The training step's rounds and their medians, and the matmul rate timed in the same rounds (this VM's product
/// rate moved 86-167 GFLOP/s between runs minutes apart, so a rate taken once before the steps put the frozen step at
/// 0.59 and 1.23 "of matmul" in two runs of one build).</summary>
public sealed record StepTimes(double TokensPerSecond, StepFlop Flop, StepRounds Rounds)
{
    public double FrozenMs => Timing.Median(Rounds.Frozen);
    public double LoraMs => Timing.Median(Rounds.Lora);
    public double MolaMs => Timing.Median(Rounds.Mola);
    public double FrozenGflops => Flop.Frozen / FrozenMs / 1e6;
    public double LoraGflops => Flop.Lora / LoraMs / 1e6;
    public double MolaGflops => Flop.Mola / MolaMs / 1e6;
    /// <summary>The matmul rate of the step's rounds (their median).</summary>
    public double MatmulGflops => Flop.Matmul / Timing.Median(Rounds.Matmul) / 1e6;

    /// <summary>A variant's FLOP/s over the matmul rate, paired: the median over rounds of the share within a round.</summary>
    public double Utilisation(double flop, IReadOnlyList<double> ms) =>
        Timing.Median(ms.Zip(Rounds.Matmul, (t, m) => flop / t / (Flop.Matmul / m)).ToList());
}

/// <summary>Decoding and prefill speed, and what decoding reads: the weights of every linear map (and of the
/// adapter) once per token, over <see cref="BandwidthGBs"/>, the read rate measured in the same rounds as decoding
/// (the median); the shares are paired (the median over rounds of the share within a round). Decoding counts the
/// tokens after the first; the first-token times are the prompt's prefill and one token.</summary>
public sealed record DecodeTimes(double BaseTokensPerSecond, double MolaTokensPerSecond, double BaseBytesPerToken, double MolaBytesPerToken,
    double BandwidthGBs, double PrefillTokensPerSecond, double BaseBandwidthShare, double MolaBandwidthShare,
    double BaseFirstTokenMs, double MolaFirstTokenMs);

/// <summary>Another program's decoding (after the first token) and prefill of the same weights, timed in rotation with
/// mola's: tokens/s, and mola's base model over it (paired: the median over rounds of the ratio within a round).</summary>
public sealed record RivalTimes(string Program, string GgufType, double DecodeTokensPerSecond, double PrefillTokensPerSecond,
    double DecodeRatio, double PrefillRatio, double FirstTokenMs);

/// <summary>The step and decoding benchmarks of one base dtype. The model-FLOP utilisation is over the product rate in
/// that dtype timed in the step's rounds (<see cref="StepTimes.Utilisation"/>: paired), <see cref="MatmulGflops"/> its median.</summary>
public sealed record ModelRun(ScalarType DType, StepTimes Step, DecodeTimes Decode, IReadOnlyDictionary<string, double> PairedRatios,
    RivalTimes? Against)
{
    public double MatmulGflops => Step.MatmulGflops;
    public double FrozenUtilisation => Step.Utilisation(Step.Flop.Frozen, Step.Rounds.Frozen);
    public double LoraUtilisation => Step.Utilisation(Step.Flop.Lora, Step.Rounds.Lora);
    public double MolaUtilisation => Step.Utilisation(Step.Flop.Mola, Step.Rounds.Mola);
}

public sealed record BenchShapes(int Tokens, int Hidden, int Experts, int TopK, int Rank, double Dropout,
    int StepLayers, int StepHidden, int StepIntermediate, int StepTokens, int Vocab, int[] StepExperts, int Threads, string? Shape);

/// <summary>Everything one <c>mola bench</c> run measured. <see cref="Layer"/> and <see cref="Floor"/> are null with
/// <c>--shape</c>; <see cref="PairedRatios"/> holds the layer's ratios and the first model run's.</summary>
public sealed record BenchReport(LayerTimes? Layer, IReadOnlyList<ModelRun> Runs, double MatmulGflops, BenchShapes Shapes, Clock Clock,
    IReadOnlyDictionary<string, double> PairedRatios, ProductFloor? Floor)
{
    public StepTimes Step => Runs[0].Step;
    public double GenerateTokensPerSecond => Runs[0].Decode.MolaTokensPerSecond;
}

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

        var config = DecoderConfig(o);
        LayerTimes? layer = null;
        ProductFloor? floor = null;
        var ratios = new Dictionary<string, double>();
        // The rate of the products that dominate the work benchmarked: the layer's without a shape, the MLP's with one.
        // Taken here once in float32 for the report, and again in each step run's own rounds and dtype.
        (long n, long k, long m) matmul = o.Shape is null ? (o.Tokens, o.Hidden, o.Hidden) : (o.StepTokens, config.HiddenSize, config.IntermediateSize);
        log($"matmul rate ({matmul.n} x {matmul.k} x {matmul.m}, float32)...");
        double gflops = MatmulGflops(matmul.n, matmul.k, matmul.m, ScalarType.Float32, Math.Max(3, o.Rounds), o.Clock);
        if (o.Shape is null)
        {
            log($"layer: {o.Hidden} x {o.Hidden}, {o.Tokens} tokens, {o.Experts} experts, top-{o.TopK}, rank {o.Rank}...");
            var (layerTimes, layerRatios) = Layer(o);
            layer = layerTimes;
            foreach (var (key, value) in layerRatios) ratios[key] = value;
            log("layer products one by one...");
            floor = Floor(o, layer.FrozenMs);
        }
        var allocation = ExpertAllocation.ParseExperts(o.Allocation, config.NumHiddenLayers, "--allocation");
        var runs = new List<ModelRun>();
        foreach (var dtype in o.DTypes)
        {
            log($"step ({DTypeName(dtype)}): {config.NumHiddenLayers} layers, hidden {config.HiddenSize}, {o.StepTokens} tokens, MoLA {string.Join(",", allocation)}, " +
                $"with the matmul rate ({matmul.n} x {matmul.k} x {matmul.m}) in the same rounds...");
            runs.Add(StepAndGenerate(o, config, dtype, allocation, matmul, log));
        }
        foreach (var (key, value) in runs[0].PairedRatios) ratios[key] = value;

        var shapes = new BenchShapes(o.Tokens, o.Hidden, o.Experts, o.TopK, o.Rank, o.Dropout,
            config.NumHiddenLayers, config.HiddenSize, config.IntermediateSize, o.StepTokens, config.VocabSize, allocation, torch.get_num_threads(), o.Shape);
        return new BenchReport(layer, runs, gflops, shapes, o.Clock, ratios, floor);
    }

    /// <summary>GFLOP/s of one product [n, k] x [k, m] in <paramref name="dtype"/>.</summary>
    public static double MatmulGflops(long n, long k, long m, ScalarType dtype, int repeats, Clock clock = Clock.Wall)
    {
        using var scope = NewDisposeScope();
        var t = Timing.Interleaved([("matmul", Products((n, k, m), dtype, 1))], 1, repeats, clock)[0];
        return 2.0 * n * k * m / (t.Median / 1000) / 1e9;
    }

    /// <summary>The work the matmul rate times: random [n, k] x [k, m] in <paramref name="dtype"/>, <paramref name="repeats"/>
    /// products a run (the operands in the caller's dispose scope).</summary>
    static Action Products((long n, long k, long m) shape, ScalarType dtype, int repeats)
    {
        var a = randn(shape.n, shape.k).to(dtype);
        var b = randn(shape.k, shape.m).to(dtype);
        return () =>
        {
            for (int i = 0; i < repeats; i++) { using var c = a.matmul(b); }
        };
    }

    /// <summary>Float32 elements the read rate sums: 512 MiB, far past every cache.</summary>
    const long ReadElements = 128L << 20;

    /// <summary>A sum over <paramref name="x"/> (<see cref="ReadElements"/> float32), as decoding reads its weights: once
    /// per token, in order. Timed in the decoding rounds, since this machine's read rate moves from minute to minute
    /// (23 to 48 GB/s measured in one afternoon on a quiet VM), so a figure taken once at the start misjudged the share.</summary>
    static Action ReadAll(Tensor x) => () => { using var s = x.sum(); };

    static double ReadGBs(double milliseconds) => 4.0 * ReadElements / (milliseconds / 1000) / 1e9;

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
        if (o.Shape is not null) return ModelShapes.All[o.Shape].Config();
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

    static ModelRun StepAndGenerate(BenchOptions o, ModelConfig config, ScalarType dtype, int[] allocation, (long n, long k, long m) matmul, Action<string> log)
    {
        using var scope = NewDisposeScope();
        using var model = new CausalLM(config, dtype, CPU);
        using (no_grad())
        {
            foreach (var p in model.parameters())
            {
                if (p.dim() == 1) p.fill_(1);
                else p.normal_(0, 1 / Math.Sqrt(p.shape[^1]));   // in place: a 1.1B model has no room for a float32 copy
            }
        }
        int layers = config.NumHiddenLayers;
        string[] all = [.. TargetModules.All];
        var loraConfig = new AdapterConfig { Kind = AdapterKind.Lora, TargetModules = all, Rank = Fill(o.Rank, layers), LoraAlpha = o.Alpha, LoraDropout = o.Dropout };
        var molaConfig = loraConfig with { Kind = AdapterKind.Mola, NumExperts = allocation, TopK = Fill(o.TopK, layers) };
        var lora = AdapterModel.Attach(model, loraConfig, "bench");
        lora.DetachFromBase();
        var mola = AdapterModel.Attach(model, molaConfig, "bench");
        mola.DetachFromBase();
        foreach (var adapter in new[] { lora, mola })
        {
            adapter.SetPrecision(o.AdapterPrecision);
            using var _ = no_grad();
            foreach (var p in adapter.parameters().Where(p => p.abs().max().item<float>() == 0))
                p.copy_(randn_like(p) * 0.01);   // B: make the adapters' outputs count, as after training
        }

        // The same backward graph for all three: gradients flow down to the first layer's input (the frozen step
        // would otherwise have nothing to compute), so the variants differ only by the adapter. The embeddings'
        // output is made a leaf that wants its gradient, rather than the table itself: a table's gradient is a dense
        // [vocab, hidden] tensor (at the 1.1B shape 131 MB written every step) that no adapter training computes.
        var embeddings = model.model.embed_tokens;
        var hook = embeddings.register_forward_hook((_, _, output) => output.requires_grad_(true));
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
                optimizer!.Step(AdamW.ClipScale(1.0, optimizer.GradNorm()), zeroGradients: true);   // as mola train steps
            }
        };
        void Use(AdapterModel? adapter)
        {
            foreach (var a in new[] { lora, mola })
                foreach (var m in a.Modules) m.Target.Adapter = null;
            if (adapter is not null)
                foreach (var m in adapter.Modules) m.Target.Adapter = m.Adapter;
        }

        // The matmul rate is a fourth variant of the same rounds: the product repeated to about half the frozen step's
        // operations, so that each round's rate is taken under the load its steps ran under.
        double frozenFlop = ModelFlop.Step(config, o.StepTokens, 0), productFlop = 2.0 * matmul.n * matmul.k * matmul.m;
        int repeats = (int)Math.Max(1, Math.Round(frozenFlop / productFlop / 2));
        var times = Timing.Interleaved(
        [
            ("frozen", Step(null, null)),
            ("lora", Step(lora, loraOptimizer)),
            ("mola", Step(mola, molaOptimizer)),
            ("matmul", Products(matmul, dtype, repeats)),
        ], Math.Min(o.Warmup, 1), o.StepRounds, o.Clock);
        var ratios = new Dictionary<string, double>
        {
            ["step_mola_over_frozen"] = Timing.PairedRatio(times[2], times[0]),
            ["step_mola_over_lora"] = Timing.PairedRatio(times[2], times[1]),
            ["step_lora_over_frozen"] = Timing.PairedRatio(times[1], times[0]),
        };
        var flop = new StepFlop(frozenFlop, ModelFlop.Step(config, o.StepTokens, Count(lora)), ModelFlop.Step(config, o.StepTokens, Count(mola)), repeats * productFlop);
        var step = new StepTimes(o.StepTokens / (times[2].Median / 1000), flop,
            new StepRounds(times[0].Milliseconds, times[1].Milliseconds, times[2].Milliseconds, times[3].Milliseconds));
        hook.remove();

        log($"generation: {o.PromptTokens}-token prompt, {o.GenerateTokens} new tokens, base model and MoLA adapter{(o.Against is null ? "" : " and " + o.Against)}, KV cache...");
        mola.eval();
        var prompt = Enumerable.Range(0, o.PromptTokens).Select(i => 3 + i % (config.VocabSize - 3)).ToList();
        // EOS -1 never comes, so every run generates exactly the number of tokens asked for.
        var options = new GenerationOptions { MaxNewTokens = o.GenerateTokens };
        // Each generation also notes when its first token came (the prompt's prefill and one step): decoding is the
        // tokens after it, as llama.cpp reports "eval" apart from "prompt eval". The prompt's prefill runs matrix
        // products, not the one-row products decoding is made of (a 16-token prompt took 4.5 decode steps here), so
        // counted in, it blurred what decoding reads per second.
        var firstTokens = new Dictionary<string, List<double>>();
        Action Timed(string name, Action<Action<int>> generate) => () =>
        {
            var list = firstTokens.TryGetValue(name, out var l) ? l : firstTokens[name] = [];
            var start = Timing.Now(o.Clock);
            generate(step => { if (step == 1) list.Add(Timing.Now(o.Clock) - start); });
        };
        Action Generate(AdapterModel? adapter) => Timed(adapter is null ? "base" : "mola", afterStep =>
        {
            Use(adapter);
            TextGenerator.Generate(model, [prompt], options, eosId: -1, afterStep: afterStep);
        });
        Use(mola);
        TextGenerator.Generate(model, [prompt], options with { MaxNewTokens = Math.Min(4, o.GenerateTokens) }, eosId: -1);
        Use(null);
        using var llama = o.Against is null ? null : StartLlamaCpp(o, model, log);
        var prefillIds = randint(config.VocabSize, [1, o.PrefillTokens], dtype: ScalarType.Int64);
        var prefillList = prefillIds.data<long>().Select(t => (int)t).ToList();
        using var readBuffer = ones(ReadElements);
        List<(string, Action)> decoders = [("base", Generate(null)), ("mola", Generate(mola)), ("read", ReadAll(readBuffer))];
        List<(string, Action)> prefillers =
        [
            ("prefill", () =>
            {
                using var _ = no_grad();
                using var s = NewDisposeScope();
                using var cache = new KvCache(layers);
                model.Forward(prefillIds, null, cache);
            }),
        ];
        if (llama is not null)
        {
            decoders.Add(("llama.cpp", Timed("llama.cpp", afterStep => llama.Generate(prompt, o.GenerateTokens, afterStep))));
            prefillers.Add(("llama.cpp prefill", () => llama.Prefill(prefillList)));
            llama.Generate(prompt, Math.Min(4, o.GenerateTokens));   // warm-up, as mola's above
        }
        var gen = Timing.Interleaved(decoders, 0, o.DecodeRounds, o.Clock).ToDictionary(t => t.Name);
        // Tokens/s after the first token, one figure per round (the same clock's readings: never negative).
        List<double> Rates(string name) => gen[name].Milliseconds.Zip(firstTokens[name],
            (all, first) => (o.GenerateTokens - 1) / (Math.Max(all - first, 1e-6) / 1000)).ToList();
        var baseRates = Rates("base");
        var molaRates = Rates("mola");
        var reads = gen["read"].Milliseconds;

        log($"prefill: {o.PrefillTokens} tokens into an empty KV cache, base model{(llama is null ? "" : " and llama.cpp")}...");
        Use(null);
        var prefills = Timing.Interleaved(prefillers, 1, o.DecodeRounds, o.Clock);
        var prefill = prefills[0];
        RivalTimes? against = null;
        if (llama is not null)
        {
            var rival = Rates("llama.cpp");
            against = new RivalTimes(o.Against!, LlamaCppRun.GgufType, Timing.Median(rival), o.PrefillTokens / (prefills[1].Median / 1000),
                Timing.Median(baseRates.Zip(rival, (m, l) => m / l).ToList()), Timing.PairedRatio(prefills[1], prefills[0]),
                Timing.Median(firstTokens["llama.cpp"]));
            ratios["decode_mola_over_llama_cpp"] = against.DecodeRatio;
            ratios["prefill_mola_over_llama_cpp"] = against.PrefillRatio;
        }

        long baseBytes = ModelFlop.LinearWeights(config) * ParameterCount.BytesPerElement(dtype);
        long molaBytes = baseBytes + 4 * Count(mola);
        // Bytes per second over the read rate, both in one round.
        double Share(List<double> rates, long bytes) => Timing.Median(rates.Zip(reads, (rate, read) => bytes * rate / (ReadGBs(read) * 1e9)).ToList());
        var decode = new DecodeTimes(Timing.Median(baseRates), Timing.Median(molaRates),
            baseBytes, molaBytes, ReadGBs(gen["read"].Median), o.PrefillTokens / (prefill.Median / 1000),
            Share(baseRates, baseBytes), Share(molaRates, molaBytes), Timing.Median(firstTokens["base"]), Timing.Median(firstTokens["mola"]));
        return new ModelRun(dtype, step, decode, ratios, against);
    }

    /// <summary>The model written to GGUF and loaded by llama.cpp, with libtorch's thread count (the same cores as mola).</summary>
    static LlamaCppRun StartLlamaCpp(BenchOptions o, CausalLM model, Action<string> log)
    {
        log($"llama.cpp: the same weights written to GGUF {LlamaCppRun.GgufType} and loaded, {torch.get_num_threads()} threads...");
        int context = Math.Max(o.PromptTokens + o.GenerateTokens, o.PrefillTokens);
        return new LlamaCppRun(model, torch.get_num_threads(), context, Math.Max(o.PromptTokens, o.PrefillTokens));
    }

    static long Count(AdapterModel adapter) => adapter.parameters().Sum(p => p.numel());

    static int[] Fill(int value, int count) => Enumerable.Repeat(value, count).ToArray();

    public static string DTypeName(ScalarType dtype) => dtype.ToString().ToLowerInvariant();
}
