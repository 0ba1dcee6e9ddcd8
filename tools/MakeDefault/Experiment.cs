using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Mola.Adapters;
using Mola.Data;
using Mola.Evaluation;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;
using static TorchSharp.torch;

namespace MakeDefault;

public sealed record ExperimentOptions
{
    public int Seed { get; init; } = 42;
    public int Steps { get; init; } = 60;
    public int BatchSize { get; init; } = 16;
    public double LearningRate { get; init; } = 3e-3;
    public int WarmupSteps { get; init; } = 6;
    public int Rank { get; init; } = 8;
    /// <summary>Experts per layer, as <c>mola train --experts</c> reads it (a group pattern fits any layer count).</summary>
    public string Experts { get; init; } = "2468";
    public int TopK { get; init; } = 2;
    public bool TrainOnInputs { get; init; }
    public int Cutoff { get; init; } = 256;
    public int EvalItems { get; init; } = 200;
    public string Kind { get; init; } = "mola";
}

/// <summary>
/// A throwaway check that the default model and task do what the default run needs: a MoLA adapter
/// trained for a minute or two takes held-out accuracy from chance to far above it. It trains through the
/// library's recipe, as <c>mola train</c>'s embedded default does, into a temporary run directory.
/// </summary>
public static class Experiment
{
    public static void Run(string assets, ExperimentOptions o, TextWriter log)
    {
        var clock = Stopwatch.StartNew();
        var test = InstructionRecord.Load(Path.Combine(assets, "default-task", "test.jsonl")).Take(o.EvalItems).ToList();
        bool lora = o.Kind == "lora";
        string output = Directory.CreateTempSubdirectory("makedefault-experiment-").FullName;
        var run = new RunDescription
        {
            BaseModel = Path.Combine(assets, "default-model"),
            Data = Path.Combine(assets, "default-task", "train.jsonl"),
            Output = output,
            Template = Path.Combine(assets, "default-task", "template.json"),
            Training = new TrainingOptions
            {
                LearningRate = o.LearningRate,
                WarmupSteps = o.WarmupSteps,
                MaxSteps = o.Steps,
                BatchSize = o.BatchSize,
                MicroBatchSize = o.BatchSize,
                Seed = o.Seed,
                SaveSteps = 0,
            },
            Tokenize = new TokenizeOptions(o.Cutoff, AddEos: true, TrainOnInputs: o.TrainOnInputs),
            Adapter = new AdapterSpec
            {
                Kind = o.Kind,
                Rank = o.Rank.ToString(CultureInfo.InvariantCulture),
                Experts = lora ? null : o.Experts,
                TopK = lora ? null : o.TopK.ToString(CultureInfo.InvariantCulture),
            },
            CommandLine = "tools/MakeDefault experiment",
        };
        var t0 = clock.Elapsed;
        var recipe = new TrainingRecipe(run)
        {
            Log = log.WriteLine,
            BeforeTraining = m => log.WriteLine($"accuracy before: {HeldOut(m, test):P1}  ({clock.Elapsed.TotalSeconds:F1} s)"),
            Progress = (_, loop) => loop(m =>
            {
                if (m.Step % 10 == 0 || m.Step == 1)
                    log.WriteLine($"step {m.Step,4}  loss {m.CeLoss:F4}  aux {m.AuxLoss:F3}  lr {m.Lr:E2}  {clock.Elapsed.TotalSeconds:F0} s");
            }),
            AfterTraining = m =>
            {
                m.Adapter.eval();   // dropout off
                log.WriteLine($"accuracy after: {HeldOut(m, test):P1}; total {clock.Elapsed.TotalSeconds:F1} s wall, " +
                    $"{Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds:F1} s CPU");
            },
        };
        try { recipe.Execute(); }
        finally { Directory.Delete(output, recursive: true); }
    }

    /// <summary>Held-out accuracy as the embedded default measures it: greedy decoding in the run's template, the
    /// letter read from "The answer is X.".</summary>
    static double HeldOut(RecipeModel m, IReadOnlyList<InstructionRecord> test) =>
        Evaluator.Run(m.Model, m.Tokenizer, m.Template, Benchmarks.Get("openbookqa"), test, Scoring.Generate, batchSize: 16, maxNewTokens: 12).Metrics.Accuracy;

    /// <summary>Teacher-forced: the share of records whose letter in "The answer is X." is the likeliest
    /// of A-D after the prompt and "The answer is". One forward pass per record: cheap enough to watch training.</summary>
    public static double LetterAccuracy(CausalLM model, MolaTokenizer tok, IReadOnlyList<TaskRecord> records, int batchSize = 32)
    {
        using var _ = no_grad();
        var letterIds = Words.Letters.Select(l => (long)tok.Encode($"is {l}")[^1]).ToArray();
        int correct = 0;
        for (int start = 0; start < records.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var chunk = records.Skip(start).Take(batchSize).ToList();
            var seqs = chunk.Select(r => tok.Encode(Alpaca.Prompt(r.Instruction, r.Input) + r.Output, bos: true)).ToList();
            using var batch = Batching.PadRight(seqs, 0, CPU);
            var logits = model.Forward(batch.InputIds, batch.AttentionMask);
            for (int b = 0; b < chunk.Count; b++)
            {
                int letterAt = seqs[b].Count - 2; // "... is ▁ X ."
                var scores = logits[b, letterAt - 1].index_select(0, tensor(letterIds));
                if (Words.Letters[scores.argmax().item<long>()] == chunk[b].Answer) correct++;
            }
        }
        return (double)correct / records.Count;
    }

    static readonly Regex AnswerPattern = new(@"answer is \(?([A-D])\b");

    /// <summary>Greedy generation after the prompt (a few tokens, KV cache); the answer is read from "The answer is X".</summary>
    public static double Accuracy(CausalLM model, MolaTokenizer tok, IReadOnlyList<TaskRecord> records, int batchSize = 50, int maxNewTokens = 10)
    {
        using var _ = no_grad();
        int correct = 0;
        for (int start = 0; start < records.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var chunk = records.Skip(start).Take(batchSize).ToList();
            var prompts = chunk.Select(r => tok.Encode(Alpaca.Prompt(r.Instruction, r.Input), bos: true)).ToList();
            var (ids, mask) = Batching.PadLeft(prompts, 0, CPU);
            using var cache = new KvCache(model.Config.NumHiddenLayers);
            var generated = chunk.Select(_ => new List<int>()).ToList();
            var input = ids;
            for (int t = 0; t < maxNewTokens; t++)
            {
                var logits = model.Forward(input, mask, cache);
                var next = logits[.., -1, ..].argmax(-1);
                var nextIds = next.data<long>().ToArray();
                for (int b = 0; b < chunk.Count; b++) generated[b].Add((int)nextIds[b]);
                input = next.unsqueeze(1);
                mask = cat([mask, ones(chunk.Count, 1, ScalarType.Int64)], 1);
            }
            for (int b = 0; b < chunk.Count; b++)
            {
                var tokens = generated[b].TakeWhile(id => id != tok.EosId).ToList();
                var m = AnswerPattern.Match(tok.Decode(tokens));
                if (m.Success && m.Groups[1].Value == chunk[b].Answer) correct++;
            }
        }
        return (double)correct / records.Count;
    }
}
