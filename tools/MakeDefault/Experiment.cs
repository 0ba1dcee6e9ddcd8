using System.Diagnostics;
using System.Text.RegularExpressions;
using Mola.Platform;
using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
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
    public int[] Experts { get; init; } = [2, 4, 6, 8];
    public int TopK { get; init; } = 2;
    public bool TrainOnInputs { get; init; }
    public int Cutoff { get; init; } = 256;
    public int EvalItems { get; init; } = 200;
    public string Kind { get; init; } = "mola";
}

/// <summary>
/// A throwaway check that the default model and task do what the default run needs: a MoLA adapter
/// trained for a minute or two takes held-out accuracy from chance to far above it.
/// </summary>
public static class Experiment
{
    public static void Run(string assets, ExperimentOptions o, TextWriter log)
    {
        Native.Initialise();
        torch.manual_seed(o.Seed);
        var clock = Stopwatch.StartNew();
        string modelDir = Path.Combine(assets, "default-model");
        var model = ModelLoader.Load(modelDir);
        var tok = MolaTokenizer.Load(modelDir, model.Config.BosTokenId, model.Config.EosTokenId);
        var train = Read(Path.Combine(assets, "default-task", "train.jsonl"));
        var test = Read(Path.Combine(assets, "default-task", "test.jsonl")).Take(o.EvalItems).ToList();
        log.WriteLine($"loaded in {clock.Elapsed.TotalSeconds:F1} s; {train.Count} train, {test.Count} test records");

        var t0 = clock.Elapsed;
        double before = Accuracy(model, tok, test);
        log.WriteLine($"accuracy before: {before:P1}  ({(clock.Elapsed - t0).TotalSeconds:F1} s)");

        var layers = model.Config.NumHiddenLayers;
        var experts = o.Experts.Length == layers ? o.Experts : Enumerable.Range(0, layers).Select(l => o.Experts[l * o.Experts.Length / layers]).ToArray();
        var config = new AdapterConfig
        {
            Kind = o.Kind == "lora" ? AdapterKind.Lora : AdapterKind.Mola,
            TargetModules = [.. TargetModules.All],
            Rank = Enumerable.Repeat(o.Rank, layers).ToArray(),
            NumExperts = o.Kind == "lora" ? [] : experts,
            TopK = o.Kind == "lora" ? [] : Enumerable.Repeat(o.TopK, layers).ToArray(),
            LoraAlpha = 16,
            LoraDropout = 0.05,
        };
        var adapter = AdapterModel.Attach(model, config);
        var parameters = adapter.parameters().ToList();
        log.WriteLine($"adapter: {o.Kind}, experts [{string.Join(",", config.NumExperts)}], rank {o.Rank}, {parameters.Sum(p => p.numel()):N0} trainable parameters");
        var optimizer = optim.AdamW(parameters, lr: o.LearningRate, weight_decay: 0);
        var examples = train.Select(r => Example(tok, r, o)).ToList();
        var rnd = new Random(o.Seed);
        adapter.train();
        t0 = clock.Elapsed;
        for (int step = 1; step <= o.Steps; step++)
        {
            double lr = step <= o.WarmupSteps ? o.LearningRate * step / o.WarmupSteps
                : o.LearningRate * (o.Steps - step + 1) / (o.Steps - o.WarmupSteps + 1);
            foreach (var g in optimizer.ParamGroups) g.LearningRate = lr;
            using var scope = NewDisposeScope();
            var picked = Enumerable.Range(0, o.BatchSize).Select(_ => examples[rnd.Next(examples.Count)]).ToList();
            using var batch = Batching.PadRight(picked.Select(e => e.Ids).ToList(), 0, CPU, picked.Select(e => e.Labels).ToList());
            optimizer.zero_grad();
            using var output = adapter.Forward(batch.InputIds, batch.AttentionMask, batch.Labels);
            output.Loss!.backward();
            optimizer.step();
            if (step % 10 == 0 || step == 1)
                log.WriteLine($"step {step,4}  loss {output.CeLoss!.item<float>():F4}  aux {output.AuxLoss!.item<float>():F3}  lr {lr:E2}  {(clock.Elapsed - t0).TotalSeconds:F0} s");
        }
        log.WriteLine($"training: {o.Steps} steps x {o.BatchSize} in {(clock.Elapsed - t0).TotalSeconds:F1} s (CPU so far {Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds:F1} s)");
        adapter.eval();
        t0 = clock.Elapsed;
        double after = Accuracy(model, tok, test);
        log.WriteLine($"accuracy after: {after:P1}  ({(clock.Elapsed - t0).TotalSeconds:F1} s); total {clock.Elapsed.TotalSeconds:F1} s wall, {Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds:F1} s CPU");
    }

    static List<TaskRecord> Read(string path) => Jsonl.ReadObjects(path).Select(x => new TaskRecord(
        Jsonl.RequireString(x.Obj, "instruction", path, x.Line), Jsonl.RequireString(x.Obj, "input", path, x.Line),
        Jsonl.RequireString(x.Obj, "output", path, x.Line), Jsonl.RequireString(x.Obj, "answer", path, x.Line))).ToList();

    static (List<int> Ids, List<long> Labels) Example(MolaTokenizer tok, TaskRecord r, ExperimentOptions o)
    {
        string prompt = Alpaca.Prompt(r.Instruction, r.Input);
        var ids = tok.Encode(prompt + r.Output, bos: true, eos: true);
        if (ids.Count > o.Cutoff) throw new InvalidOperationException($"record longer than the cutoff: {ids.Count} tokens");
        int promptLength = o.TrainOnInputs ? 0 : tok.Encode(prompt, bos: true).Count;
        var labels = ids.Select((id, i) => i < promptLength ? Losses.IgnoreIndex : id).ToList();
        return (ids, labels);
    }

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
