using System.CommandLine;
using System.Globalization;
using Mola.Adapters;
using Mola.Cli.Bench;

namespace Mola.Cli.Commands;

public static class BenchCommand
{
    public static Command Create()
    {
        var d = new BenchOptions();
        var tokens = new Option<int?>("--tokens") { Description = $"Tokens through the adapted linear (default {d.Tokens})" };
        var hidden = new Option<int?>("--hidden") { Description = $"In and out features of the adapted linear (default {d.Hidden})" };
        var experts = new Option<int?>("--experts") { Description = $"MoLA experts of the adapted linear (default {d.Experts})" };
        var topK = new Option<int?>("--top-k") { Description = $"Experts per token, layer and step (default {d.TopK})" };
        var rank = new Option<int?>("--rank") { Description = $"LoRA rank of every adapter (default {d.Rank})" };
        var dropout = new Option<double?>("--dropout") { Description = $"LoRA dropout of every adapter (default {d.Dropout}: the adapter arithmetic alone; the paper trains with 0.05)" };
        var stepLayers = new Option<int?>("--step-layers") { Description = $"Decoder layers of the training-step benchmark (default {d.StepLayers})" };
        var stepHidden = new Option<int?>("--step-hidden") { Description = $"Hidden size of that decoder (default {d.StepHidden})" };
        var stepTokens = new Option<int?>("--step-tokens") { Description = $"Tokens per training step (default {d.StepTokens})" };
        var vocab = new Option<int?>("--vocab") { Description = $"Vocabulary of that decoder (default {d.Vocab}, so the head weighs as little as in a 32-layer model)" };
        var allocation = new Option<string?>("--allocation") { Description = $"Experts per layer of the MoLA step (default {d.Allocation})" };
        var rounds = new Option<int?>("--rounds") { Description = $"Timed rounds of the layer benchmark; each figure is a median (default {d.Rounds})" };
        var stepRounds = new Option<int?>("--step-rounds") { Description = $"Timed rounds of the training-step benchmark (default {d.StepRounds})" };
        var threads = new Option<int?>("--threads") { Description = "libtorch intra-op threads (default 0: libtorch's choice, one per core; 1 under --quick)" };
        var clock = new Option<string>("--clock")
        {
            Description = "wall (elapsed time) or cpu (this process's CPU time: on a machine shared with other work, " +
                "with --threads 1, it leaves out the time others hold the cores)",
            DefaultValueFactory = _ => "wall",
        };
        var tokenizer = new Option<string?>("--tokenizer")
        {
            Description = "Instead of the adapter figures: encoding speed (tokens/s, one thread) of this tokenizer.model, " +
                "tokenizer.json or model directory on the lines of --text, against Microsoft.ML.Tokenizers' LlamaTokenizer, " +
                "and how many lines the two encode differently",
        };
        var text = new Option<string?>("--text") { Description = "UTF-8 text for --tokenizer; each line is encoded as one text" };
        var prefill = new Option<int?>("--prefill-tokens") { Description = $"Tokens of the prompt whose prefill is timed (default {d.PrefillTokens})" };
        var shape = new Option<string?>("--shape")
        {
            Description = "Run the training step and decoding at a real model shape, random weights made in memory (" +
                string.Join(", ", Mola.Models.ModelShapes.All.Keys) + "; tinyllama-1.1b needs about 10 GB, the 7B shapes several times that), " +
                "in float32 and bfloat16; skips the layer benchmark. Defaults then: --step-tokens 256, --step-rounds 2",
        };
        var dtype = new Option<string?>("--dtype")
        {
            Description = "Base-model dtypes of the step and decoding benchmarks, comma-separated (default float32; with --shape float32,bfloat16)",
        };
        var adapterPrecision = new Option<string>("--adapter-precision")
        {
            Description = "The adapters' products over a bfloat16/float16 base in the step and decoding benchmarks, as mola train's: mixed " +
                "(in the base dtype) or float32",
            DefaultValueFactory = _ => AdapterPrecision.Mixed.Name(),
        };
        adapterPrecision.AcceptOnlyFromAmong(AdapterPrecision.Mixed.Name(), AdapterPrecision.Float32.Name());
        var decodeRounds = new Option<int?>("--decode-rounds") { Description = $"Timed rounds of decoding and prefill, the variants alternating (default {d.DecodeRounds}; 1 under --quick)" };
        var against = new Option<string?>("--against")
        {
            Description = "llama.cpp: also decode and prefill the same weights with llama.cpp (LLamaSharp 0.30.0, CPU backend, the same thread count), " +
                "written to a temporary GGUF F16 file as mola export --gguf f16 writes it, alternating with mola's runs; prints and reports " +
                "mola's base-model tokens/s over llama.cpp's",
        };
        var quick = new Option<bool>("--quick") { Description = "Small shapes, few rounds, one thread: a smoke run of a few seconds (flags given still apply)" };
        var json = Cli.JsonOption();
        var cmd = new Command("bench", "Performance of the adapters on this machine, in one run so ratios compare like with like: " +
            "one adapted linear (forward + backward) frozen, LoRA, MoLA and the original's per-expert loop; that layer's matrix products " +
            "one by one (added to the frozen layer, the floor of the batched MoLA path); a whole training step " +
            "of a small decoder (or of a real shape, --shape) with its FLOP/s over the matmul rate timed in the same rounds and dtype (paired); the float32 matmul rate; " +
            "decoding speed with the KV cache (base and MoLA; the tokens after the first, the first token timed apart) with its weight bytes read per second over the memory read rate measured in the same rounds (paired); " +
            "prefill speed; with --against llama.cpp, llama.cpp's decoding and prefill of the same weights. Random weights, no checkpoint needed.")
        { tokens, hidden, experts, topK, rank, dropout, stepLayers, stepHidden, stepTokens, vocab, allocation, rounds, stepRounds, threads, clock, prefill, decodeRounds, against, shape, dtype, adapterPrecision, tokenizer, text, quick, json };

        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            var b = p.GetValue(quick) ? BenchOptions.Quick : p.GetValue(shape) is string name ? BenchOptions.ForShape(name) : new BenchOptions();
            b = b with
            {
                Tokens = p.GetValue(tokens) ?? b.Tokens,
                Hidden = p.GetValue(hidden) ?? b.Hidden,
                Experts = p.GetValue(experts) ?? b.Experts,
                TopK = p.GetValue(topK) ?? b.TopK,
                Rank = p.GetValue(rank) ?? b.Rank,
                Dropout = p.GetValue(dropout) ?? b.Dropout,
                StepLayers = p.GetValue(stepLayers) ?? b.StepLayers,
                StepHidden = p.GetValue(stepHidden) ?? b.StepHidden,
                StepTokens = p.GetValue(stepTokens) ?? b.StepTokens,
                Vocab = p.GetValue(vocab) ?? b.Vocab,
                Allocation = p.GetValue(allocation) ?? b.Allocation,
                Rounds = p.GetValue(rounds) ?? b.Rounds,
                StepRounds = p.GetValue(stepRounds) ?? b.StepRounds,
                Threads = p.GetValue(threads) ?? b.Threads,
                PrefillTokens = p.GetValue(prefill) ?? b.PrefillTokens,
                DecodeRounds = p.GetValue(decodeRounds) ?? b.DecodeRounds,
                Against = p.GetValue(against),
                Shape = p.GetValue(shape),
                DTypes = p.GetValue(dtype) is string list
                    ? [.. list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(Mola.Platform.TorchNames.ParseDType)]
                    : b.DTypes,
                AdapterPrecision = AdapterPrecisions.Parse(p.GetValue(adapterPrecision)!, "--adapter-precision"),
                Clock = p.GetValue(clock) switch
                {
                    "wall" => Clock.Wall,
                    "cpu" => Clock.Cpu,
                    var other => throw new MolaException($"--clock must be wall or cpu, got \"{other}\""),
                },
            };
            if (p.GetValue(tokenizer) is string tok)
                return BenchTokenizer(o, tok, p.GetValue(text) ?? throw new MolaException("--tokenizer needs --text FILE (the text to encode)"),
                    p.GetValue(rounds) ?? 5, b.Clock);
            var r = PerformanceBenchmark.Run(b, o.Line);
            WriteHuman(o, r);
            var s = r.Shapes;
            return new
            {
                layer = r.Layer is { } l ? new { frozen_ms = l.FrozenMs, lora_ms = l.LoraMs, mola_ms = l.MolaMs, mola_loop_ms = l.MolaLoopMs } : null,
                step = new { frozen_ms = r.Step.FrozenMs, lora_ms = r.Step.LoraMs, mola_ms = r.Step.MolaMs, tokens_per_second = r.Step.TokensPerSecond },
                matmul_gflops = r.MatmulGflops,
                generate_tokens_per_second = r.GenerateTokensPerSecond,
                ratios = r.PairedRatios,
                runs = r.Runs.Select(run => new
                {
                    dtype = PerformanceBenchmark.DTypeName(run.DType),
                    adapter_precision = b.AdapterPrecision.Effective(run.DType).Name(),
                    matmul_gflops = run.MatmulGflops,
                    step = new
                    {
                        frozen_ms = run.Step.FrozenMs,
                        lora_ms = run.Step.LoraMs,
                        mola_ms = run.Step.MolaMs,
                        tokens_per_second = run.Step.TokensPerSecond,
                        frozen_flop = run.Step.Flop.Frozen,
                        lora_flop = run.Step.Flop.Lora,
                        mola_flop = run.Step.Flop.Mola,
                        frozen_utilisation = run.FrozenUtilisation,
                        lora_utilisation = run.LoraUtilisation,
                        mola_utilisation = run.MolaUtilisation,
                        matmul_flop = run.Step.Flop.Matmul,
                        rounds = new { frozen_ms = run.Step.Rounds.Frozen, lora_ms = run.Step.Rounds.Lora, mola_ms = run.Step.Rounds.Mola, matmul_ms = run.Step.Rounds.Matmul },
                    },
                    decode = new
                    {
                        base_tokens_per_second = run.Decode.BaseTokensPerSecond,
                        mola_tokens_per_second = run.Decode.MolaTokensPerSecond,
                        base_bytes_per_token = run.Decode.BaseBytesPerToken,
                        mola_bytes_per_token = run.Decode.MolaBytesPerToken,
                        read_gb_per_second = run.Decode.BandwidthGBs,
                        base_bandwidth_share = run.Decode.BaseBandwidthShare,
                        mola_bandwidth_share = run.Decode.MolaBandwidthShare,
                        prefill_tokens_per_second = run.Decode.PrefillTokensPerSecond,
                        base_first_token_ms = run.Decode.BaseFirstTokenMs,
                        mola_first_token_ms = run.Decode.MolaFirstTokenMs,
                    },
                    against = run.Against is not { } a ? null : new
                    {
                        program = a.Program,
                        gguf_type = a.GgufType,
                        decode_tokens_per_second = a.DecodeTokensPerSecond,
                        prefill_tokens_per_second = a.PrefillTokensPerSecond,
                        decode_mola_over_program = a.DecodeRatio,
                        prefill_mola_over_program = a.PrefillRatio,
                        first_token_ms = a.FirstTokenMs,
                    },
                    ratios = run.PairedRatios,
                }),
                layer_floor = r.Floor is not { } floor ? null : new
                {
                    frozen_products_ms = floor.FrozenProductsMs,
                    mola_extra_ms = floor.MolaExtraMs,
                    floor_ms = floor.FloorMs,
                    floor_ratio = floor.FloorRatio,
                    ops = floor.Frozen.Concat(floor.Mola).Select(op => new { name = op.Name, ms = op.Ms, flop = op.Flop, gflops = op.Gflops }),
                },
                shapes = new
                {
                    layer = new { tokens = s.Tokens, hidden = s.Hidden, experts = s.Experts, top_k = s.TopK, rank = s.Rank, dropout = s.Dropout },
                    step = new
                    {
                        layers = s.StepLayers,
                        hidden = s.StepHidden,
                        intermediate = s.StepIntermediate,
                        tokens = s.StepTokens,
                        vocab = s.Vocab,
                        experts = s.StepExperts,
                        top_k = s.TopK,
                        rank = s.Rank,
                    },
                    threads = s.Threads,
                    shape = s.Shape,
                },
                clock = r.Clock == Clock.Cpu ? "cpu" : "wall",
            };
        }));
        return cmd;
    }

    static object BenchTokenizer(Output o, string tokenizer, string text, int rounds, Clock clock)
    {
        var c = CultureInfo.InvariantCulture;
        var r = TokenizerBenchmark.Run(tokenizer, text, rounds, clock, o.Line);
        o.Line(string.Format(c, "ours:      {0,10:F0} tokens/s  ({1:F0} ms; a fresh tokenizer, its word cache empty: {2:F0} tokens/s; load {3:F0} ms)",
            r.OursTokensPerSecond, r.OursMs, r.OursColdTokensPerSecond, r.LoadMs));
        if (r.LibraryTokensPerSecond is double lib)
        {
            o.Line(string.Format(c, "library:   {0,10:F0} tokens/s  ({1:F0} ms); ours / library {2:F2}x", lib, r.LibraryMs, r.OursTokensPerSecond / lib));
            o.Line(string.Format(c, "lines the library encodes differently: {0} of {1}; decodes differently: {2}{3}",
                r.EncodeDiffers, r.Lines, r.DecodeDiffers, r.FirstDifference is string f ? $" (first: {f})" : ""));
        }
        return new
        {
            lines = r.Lines,
            chars = r.Chars,
            tokens = r.Tokens,
            load_ms = r.LoadMs,
            ours_tokens_per_second = r.OursTokensPerSecond,
            ours_cold_tokens_per_second = r.OursColdTokensPerSecond,
            library_tokens_per_second = r.LibraryTokensPerSecond,
            library_encode_differs = r.EncodeDiffers,
            library_decode_differs = r.DecodeDiffers,
            clock = clock == Clock.Cpu ? "cpu" : "wall",
        };
    }

    static void WriteHuman(Output o, BenchReport r)
    {
        var c = CultureInfo.InvariantCulture;
        var s = r.Shapes;
        string Row(string name, double ms, double baseMs) => string.Format(c, "  {0,-12} {1,10:F1} ms  {2,6:F3}x", name, ms, ms / baseMs);
        if (r.Layer is { } layer && r.Floor is { } floor)
        {
            o.Line(string.Format(c, "adapted linear {0} x {0}, {1} tokens, {2} experts, top-{3}, rank {4}, dropout {5} (forward + backward, median {6} time)",
                s.Hidden, s.Tokens, s.Experts, s.TopK, s.Rank, s.Dropout, r.Clock == Clock.Cpu ? "CPU" : "wall"));
            o.Line(Row("frozen", layer.FrozenMs, layer.FrozenMs));
            o.Line(Row("lora", layer.LoraMs, layer.FrozenMs));
            o.Line(Row("mola", layer.MolaMs, layer.FrozenMs));
            o.Line(Row("mola_loop", layer.MolaLoopMs, layer.FrozenMs));
            o.Line("the same layer's products timed one by one (median): the floor of the batched MoLA path");
            foreach (var op in floor.Frozen.Concat(floor.Mola))
                o.Line(string.Format(c, "  {0,-22} {1,8:F2} ms  {2}", op.Name, op.Ms, op.Flop > 0 ? string.Format(c, "{0,5:F0} GFLOP/s", op.Gflops) : "memory pass"));
            o.Line(string.Format(c, "  floor: the frozen layer {0:F1} ms + MoLA's extra products {1:F1} ms = {2:F1} ms = {3:F3}x frozen; mola {4:F1} ms " +
                "(above the floor: routing, glue, autograd)", layer.FrozenMs, floor.MolaExtraMs, floor.FloorMs, floor.FloorRatio, layer.MolaMs));
        }
        foreach (var run in r.Runs)
        {
            string Utilisation(double gflops, double share) => string.Format(c, "  {0,6:F1} GFLOP/s = {1:F2} of matmul", gflops, share);
            o.Line(string.Format(c, "training step{0}, {1}: {2} layers, hidden {3}, intermediate {4}, {5} tokens, vocab {6}, MoLA {7} (median; matmul {8:F1} GFLOP/s in {1}, timed in the same rounds; shares paired)",
                s.Shape is null ? "" : " at " + s.Shape, PerformanceBenchmark.DTypeName(run.DType), s.StepLayers, s.StepHidden, s.StepIntermediate, s.StepTokens, s.Vocab,
                string.Join(",", s.StepExperts), run.MatmulGflops));
            o.Line(Row("frozen", run.Step.FrozenMs, run.Step.FrozenMs) + Utilisation(run.Step.FrozenGflops, run.FrozenUtilisation));
            o.Line(Row("lora", run.Step.LoraMs, run.Step.FrozenMs) + Utilisation(run.Step.LoraGflops, run.LoraUtilisation));
            o.Line(Row("mola", run.Step.MolaMs, run.Step.FrozenMs) + Utilisation(run.Step.MolaGflops, run.MolaUtilisation) +
                string.Format(c, "  {0:F0} tokens/s", run.Step.TokensPerSecond));
            var d = run.Decode;
            o.Line(string.Format(c, "  decoding (KV cache, batch 1, after the first token): base {0:F1} tokens/s x {1:F0} MB = {2:F2} of the read rate ({3:F1} GB/s, the same rounds); " +
                "MoLA {4:F1} tokens/s x {5:F0} MB = {6:F2}; first token {8:F0} ms (MoLA {9:F0}); prefill {7:F0} tokens/s",
                d.BaseTokensPerSecond, d.BaseBytesPerToken / 1e6, d.BaseBandwidthShare, d.BandwidthGBs,
                d.MolaTokensPerSecond, d.MolaBytesPerToken / 1e6, d.MolaBandwidthShare, d.PrefillTokensPerSecond, d.BaseFirstTokenMs, d.MolaFirstTokenMs));
            if (run.Against is { } a)
                o.Line(string.Format(c, "  {0} (GGUF {1}, same weights, alternating): decoding {2:F1} tokens/s, first token {7:F0} ms, prefill {3:F0} tokens/s; " +
                    "mola {4} / {0}: decoding {5:F2}x, prefill {6:F2}x", a.Program, a.GgufType.ToUpperInvariant(), a.DecodeTokensPerSecond, a.PrefillTokensPerSecond,
                    PerformanceBenchmark.DTypeName(run.DType), a.DecodeRatio, a.PrefillRatio, a.FirstTokenMs));
            o.Line(string.Format(c, "  paired ratios: {0}", string.Join(", ", run.PairedRatios.Select(kv => string.Format(c, "{0} {1:F3}", kv.Key, kv.Value)))));
        }
        if (r.Layer is not null)
            o.Line(string.Format(c, "paired ratios of the layer (median over rounds of the ratio within a round): {0}",
                string.Join(", ", r.PairedRatios.Where(kv => kv.Key.StartsWith("layer_", StringComparison.Ordinal)).Select(kv => string.Format(c, "{0} {1:F3}", kv.Key, kv.Value)))));
        o.Line(string.Format(c, "matmul {0:F1} GFLOP/s float32, {1} thread{2}; generation {3:F1} tokens/s (KV cache, batch 1, MoLA)",
            r.MatmulGflops, s.Threads, s.Threads == 1 ? "" : "s", r.GenerateTokensPerSecond));
    }
}
