using System.CommandLine;
using System.Globalization;
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
        var quick = new Option<bool>("--quick") { Description = "Small shapes, few rounds, one thread: a smoke run of a few seconds (flags given still apply)" };
        var json = Cli.JsonOption();
        var cmd = new Command("bench", "Performance of the adapters on this machine, in one run so ratios compare like with like: " +
            "one adapted linear (forward + backward) frozen, LoRA, MoLA and the original's per-expert loop; that layer's matrix products " +
            "one by one (added to the frozen layer, the floor of the batched MoLA path); a whole training step " +
            "of a small decoder; the float32 matmul rate; generation speed with the KV cache. Random weights, no checkpoint needed.")
        { tokens, hidden, experts, topK, rank, dropout, stepLayers, stepHidden, stepTokens, vocab, allocation, rounds, stepRounds, threads, clock, tokenizer, text, quick, json };

        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            var b = p.GetValue(quick) ? BenchOptions.Quick : new BenchOptions();
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
                layer = new { frozen_ms = r.Layer.FrozenMs, lora_ms = r.Layer.LoraMs, mola_ms = r.Layer.MolaMs, mola_loop_ms = r.Layer.MolaLoopMs },
                step = new { frozen_ms = r.Step.FrozenMs, lora_ms = r.Step.LoraMs, mola_ms = r.Step.MolaMs, tokens_per_second = r.Step.TokensPerSecond },
                matmul_gflops = r.MatmulGflops,
                generate_tokens_per_second = r.GenerateTokensPerSecond,
                ratios = r.PairedRatios,
                layer_floor = new
                {
                    frozen_products_ms = r.Floor.FrozenProductsMs,
                    mola_extra_ms = r.Floor.MolaExtraMs,
                    floor_ms = r.Floor.FloorMs,
                    floor_ratio = r.Floor.FloorRatio,
                    ops = r.Floor.Frozen.Concat(r.Floor.Mola).Select(op => new { name = op.Name, ms = op.Ms, flop = op.Flop, gflops = op.Gflops }),
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
        o.Line(string.Format(c, "adapted linear {0} x {0}, {1} tokens, {2} experts, top-{3}, rank {4}, dropout {5} (forward + backward, median {6} time)",
            s.Hidden, s.Tokens, s.Experts, s.TopK, s.Rank, s.Dropout, r.Clock == Clock.Cpu ? "CPU" : "wall"));
        o.Line(Row("frozen", r.Layer.FrozenMs, r.Layer.FrozenMs));
        o.Line(Row("lora", r.Layer.LoraMs, r.Layer.FrozenMs));
        o.Line(Row("mola", r.Layer.MolaMs, r.Layer.FrozenMs));
        o.Line(Row("mola_loop", r.Layer.MolaLoopMs, r.Layer.FrozenMs));
        o.Line("the same layer's products timed one by one (median): the floor of the batched MoLA path");
        foreach (var op in r.Floor.Frozen.Concat(r.Floor.Mola))
            o.Line(string.Format(c, "  {0,-22} {1,8:F2} ms  {2}", op.Name, op.Ms, op.Flop > 0 ? string.Format(c, "{0,5:F0} GFLOP/s", op.Gflops) : "memory pass"));
        o.Line(string.Format(c, "  floor: the frozen layer {0:F1} ms + MoLA's extra products {1:F1} ms = {2:F1} ms = {3:F3}x frozen; mola {4:F1} ms " +
            "(above the floor: routing, glue, autograd)", r.Layer.FrozenMs, r.Floor.MolaExtraMs, r.Floor.FloorMs, r.Floor.FloorRatio, r.Layer.MolaMs));
        o.Line(string.Format(c, "training step: {0} layers, hidden {1}, intermediate {2}, {3} tokens, vocab {4}, MoLA {5} (median)",
            s.StepLayers, s.StepHidden, s.StepIntermediate, s.StepTokens, s.Vocab, string.Join(",", s.StepExperts)));
        o.Line(Row("frozen", r.Step.FrozenMs, r.Step.FrozenMs));
        o.Line(Row("lora", r.Step.LoraMs, r.Step.FrozenMs));
        o.Line(Row("mola", r.Step.MolaMs, r.Step.FrozenMs) + string.Format(c, "  {0:F0} tokens/s", r.Step.TokensPerSecond));
        o.Line(string.Format(c, "paired ratios (median over rounds of the ratio within a round): {0}",
            string.Join(", ", r.PairedRatios.Select(kv => string.Format(c, "{0} {1:F3}", kv.Key, kv.Value)))));
        o.Line(string.Format(c, "matmul {0:F1} GFLOP/s float32, {1} thread{2}; generation {3:F1} tokens/s (KV cache, batch 1)",
            r.MatmulGflops, s.Threads, s.Threads == 1 ? "" : "s", r.GenerateTokensPerSecond));
    }
}
