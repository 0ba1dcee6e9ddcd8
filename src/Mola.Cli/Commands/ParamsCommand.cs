using System.CommandLine;
using System.Globalization;
using Mola.Adapters;
using Mola.Models;
using Mola.Training;
using Spectre.Console;

namespace Mola.Cli.Commands;

public static class ParamsCommand
{
    const string SpecHelp = "one value for every layer (8), one value per layer (2,2,4,4,...), " +
        "or a group pattern of fewer values, one per group of near-equal contiguous layers (2,4,6,8 or 2468: on 32 layers 8 layers a group, on 22 layers 6, 5, 5, 6)";

    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption();
        baseModel.Description = "Base model directory (or its config.json); only config.json is read, no weights are needed";
        var experts = new Option<string>("--experts")
        {
            Description = $"Experts per layer (required for mola): {SpecHelp}; or a preset: square:N, " +
                "inverted-triangle (2468), triangle (8642), hourglass (8228), diamond (2882)" + AllocationOptions.ExpertsHelp + " (reads the weights)",
        };
        var topK = new Option<string>("--top-k") { Description = $"Experts each token uses per layer (mola): {SpecHelp}", DefaultValueFactory = _ => AdapterSpec.DefaultTopK };
        var rank = new Option<string>("--rank") { Description = $"LoRA rank per layer: {SpecHelp}", DefaultValueFactory = _ => AdapterSpec.Paper.Rank };
        var targets = new Option<string>("--targets")
        {
            Description = "Modules to adapt, comma separated, or all",
            DefaultValueFactory = _ => AdapterSpec.Paper.Targets,
        };
        var kind = new Option<string>("--adapter-kind") { Description = "mola (mixture of LoRA experts with a router) or lora (plain LoRA, no router)", DefaultValueFactory = _ => AdapterSpec.Paper.Kind };
        var dtype = Cli.DTypeOption();
        dtype.Description = "Dtype of the frozen base weights in the memory estimate: float32, bfloat16 or float16";
        var microBatch = new Option<int>("--micro-batch-size") { Description = "Sequences per forward pass, for the activation estimate", DefaultValueFactory = _ => 8 };
        var cutoffLen = new Option<int>("--cutoff-len") { Description = "Tokens per sequence, for the activation estimate", DefaultValueFactory = _ => 256 };
        var allocation = new AllocationOptions();
        var checkpointing = new Option<bool>("--gradient-checkpointing") { Description = "Plan the memory of a run with gradient checkpointing" };
        var dropout = new Option<double>("--dropout") { Description = "Dropout on the experts' input (above 0 it keeps a mask and an output per module)", DefaultValueFactory = _ => AdapterSpec.Paper.Dropout };
        var json = Cli.JsonOption();
        var cmd = new Command("params", "Exact trainable-parameter counts of a MoLA or LoRA adapter (LoRA matrices, routers, " +
            "per layer) against the base model, and the planned peak memory of training it (what mola train checks before loading). " +
            "Reads config.json only (and the weights for --experts auto).")
        { baseModel, experts, topK, rank, targets, kind, dtype, microBatch, cutoffLen, checkpointing, dropout, json };
        foreach (var opt in allocation.All) cmd.Options.Add(opt);

        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            var config = ModelConfig.Load(p.GetValue(baseModel)!);
            int layers = config.NumHiddenLayers;
            bool mola = AdapterKinds.Parse(p.GetValue(kind)!) == AdapterKind.Mola;
            string? Given(Option<string> opt) => p.GetResult(opt) is { Implicit: false } ? p.GetValue(opt) : null;
            var adapter = allocation.Apply(p, new AdapterSpec
            {
                Kind = p.GetValue(kind)!,
                Experts = mola ? p.GetValue(experts) ?? throw new MolaException("--experts is required for --adapter-kind mola (e.g. --experts 2468 or --experts square:8)") : Given(experts),
                TopK = Given(topK),   // null: the default, or with --experts auto 2 where a layer has several experts, else 1
                Rank = p.GetValue(rank)!,
                Targets = p.GetValue(targets)!,
            }).Build(layers, p.GetValue(baseModel)!, o.Line);
            var adapterKind = adapter.Kind;
            var counts = adapter.CountParameters(config);
            if (p.GetValue(dropout) is < 0 or >= 1) throw new MolaException($"--dropout must be in [0, 1), got {p.GetValue(dropout)}");
            var memory = MemoryPlan.Estimate(config, counts, Cli.DType(p, dtype), p.GetValue(microBatch), p.GetValue(cutoffLen),
                p.GetValue(checkpointing), p.GetValue(dropout));

            WriteHuman(o, config, counts, memory);
            return new
            {
                model_type = config.ModelType,
                num_layers = layers,
                adapter_kind = adapterKind.Name(),
                targets = counts.Targets,
                lora = counts.Lora,
                router = counts.Router,
                total = counts.Total,
                @base = counts.Base,
                percent = counts.Percent,
                layers = counts.Layers.Select(l => new { layer = l.Layer, experts = l.Experts, top_k = l.TopK, rank = l.Rank, lora = l.Lora, router = l.Router, total = l.Total }),
                memory = new
                {
                    estimate = true,
                    base_dtype = memory.BaseDType,
                    micro_batch_size = memory.MicroBatchSize,
                    cutoff_len = memory.SequenceLength,
                    gradient_checkpointing = memory.GradientCheckpointing,
                    base_weights_bytes = memory.BaseWeightsBytes,
                    adapter_weights_bytes = memory.AdapterWeightsBytes,
                    adapter_gradients_bytes = memory.AdapterGradientsBytes,
                    optimizer_state_bytes = memory.OptimizerStateBytes,
                    activation_bytes = memory.ActivationBytes,
                    head_bytes = memory.HeadBytes,
                    runtime_bytes = memory.RuntimeBytes,
                    total_bytes = memory.TotalBytes,
                },
            };
        }));
        return cmd;
    }

    static void WriteHuman(Output o, ModelConfig config, ParameterCounts counts, MemoryPlan memory)
    {
        bool mola = counts.Kind == AdapterKind.Mola;
        var ranks = counts.Layers.Select(l => l.Rank).ToArray();
        o.Line($"{config.ModelType}: {config.NumHiddenLayers} layers, hidden {config.HiddenSize}, intermediate {config.IntermediateSize}, vocab {config.VocabSize}");
        o.Line($"adapter {counts.Kind.Name()} on {string.Join(", ", counts.Targets)}");
        if (mola)
        {
            o.Line($"  experts  {ExpertAllocation.Describe(counts.Layers.Select(l => l.Experts!.Value).ToArray())}   (value x layers)");
            o.Line($"  top-k    {ExpertAllocation.Describe(counts.Layers.Select(l => l.TopK!.Value).ToArray())}");
        }
        o.Line($"  rank     {ExpertAllocation.Describe(ranks)}");

        var table = new Table().Border(TableBorder.Minimal);
        table.AddColumn("layer", c => c.RightAligned());
        if (mola)
        {
            table.AddColumn("experts", c => c.RightAligned());
            table.AddColumn("top-k", c => c.RightAligned());
        }
        table.AddColumn("rank", c => c.RightAligned());
        table.AddColumn("lora", c => c.RightAligned());
        if (mola) table.AddColumn("router", c => c.RightAligned());
        table.AddColumn("total", c => c.RightAligned());
        foreach (var l in counts.Layers)
        {
            var cells = new List<string> { l.Layer.ToString(CultureInfo.InvariantCulture) };
            if (mola) cells.AddRange([l.Experts!.Value.ToString(CultureInfo.InvariantCulture), l.TopK!.Value.ToString(CultureInfo.InvariantCulture)]);
            cells.AddRange([l.Rank.ToString(CultureInfo.InvariantCulture), N(l.Lora)]);
            if (mola) cells.Add(N(l.Router));
            cells.Add(N(l.Total));
            table.AddRow(cells.ToArray());
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(o.Human) });
        console.Write(table);

        o.Line($"lora       {N(counts.Lora),16}");
        if (mola) o.Line($"router     {N(counts.Router),16}");
        o.Line($"trainable  {N(counts.Total),16}   {counts.Percent.ToString("F4", CultureInfo.InvariantCulture)}% of the base");
        o.Line($"base       {N(counts.Base),16}");
        o.Line("");
        o.Line($"training memory at its peak, planned (micro-batch {memory.MicroBatchSize} x {memory.SequenceLength} tokens, base weights {memory.BaseDType}, " +
            $"gradient checkpointing {(memory.GradientCheckpointing ? "on" : "off")}):");
        o.Line($"  base weights          {GiB(memory.BaseWeightsBytes)}");
        o.Line($"  adapter weights       {GiB(memory.AdapterWeightsBytes)}   float32");
        o.Line($"  adapter gradients     {GiB(memory.AdapterGradientsBytes)}   float32");
        o.Line($"  AdamW states          {GiB(memory.OptimizerStateBytes)}   float32, two moments");
        o.Line($"  activations           {GiB(memory.ActivationBytes)}   " + (memory.GradientCheckpointing ? "every layer's input, one layer recomputed" : "saved by every layer for the backward pass"));
        o.Line($"  loss head             {GiB(memory.HeadBytes)}   logits, their float32 copy, log-softmax and gradients");
        o.Line($"  runtime               {GiB(memory.RuntimeBytes)}   .NET, libtorch, tokenizer, data");
        o.Line($"  total                 {GiB(memory.TotalBytes)}   (mola train refuses a run planned above the memory available)");
    }

    static string N(long n) => n.ToString("N0", CultureInfo.InvariantCulture);
    static string GiB(long bytes)
    {
        const double MiB = 1024.0 * 1024, GiB = 1024 * MiB;
        // Tiny models would show 0.00 GiB everywhere; MiB keeps their figures readable.
        return bytes >= GiB ? $"{(bytes / GiB).ToString("F2", CultureInfo.InvariantCulture),9} GiB" : $"{(bytes / MiB).ToString("F2", CultureInfo.InvariantCulture),9} MiB";
    }
}
