using Mola.Data;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Evaluation;

public enum Scoring { Generate, Likelihood }

/// <summary>One scored record: its gold label, what the model answered, and the label read from it.</summary>
public sealed record Prediction(int Index, string Gold, string? Predicted, string Response, IReadOnlyDictionary<string, double>? Scores = null)
{
    public bool Correct => Predicted == Gold;
}

public sealed record EvalResult(BenchmarkMetrics Metrics, IReadOnlyList<Prediction> Predictions);

/// <summary>
/// Benchmark accuracy of a model (with whatever adapter is attached) on instruction records.
/// <c>generate</c> is the paper's scoring: greedy decoding after the template, the answer read from
/// the text. <c>likelihood</c> scores each offered label's continuation ("Answer: The answer is B.")
/// by its total log-probability after the prompt and picks the best: faster, never unparseable.
/// </summary>
public static class Evaluator
{
    public static Scoring ParseScoring(string name) => name.ToLowerInvariant() switch
    {
        "generate" => Scoring.Generate,
        "likelihood" => Scoring.Likelihood,
        _ => throw new MolaException(n => $"{n("scoring")}: unknown mode \"{name}\" (expected generate or likelihood)"),
    };

    public static EvalResult Run(CausalLM model, MolaTokenizer tok, PromptTemplate template, Benchmark task,
        IReadOnlyList<InstructionRecord> records, Scoring scoring, int batchSize = 8, int maxNewTokens = 32, Action<int>? progress = null)
    {
        if (records.Count == 0) throw new MolaException("no records to evaluate");
        if (batchSize < 1) throw new MolaException(n => $"{n("batch_size")} must be at least 1, got {batchSize}");
        var gold = records.Select(r => task.GoldLabel(r.Answer, r.Output, r.Line > 0 ? $"record at line {r.Line}" : "record")).ToList();
        var predictions = new List<Prediction>();
        bool wasTraining = model.training;
        model.eval();
        try
        {
            for (int start = 0; start < records.Count; start += batchSize)
            {
                var chunk = Enumerable.Range(start, Math.Min(batchSize, records.Count - start)).ToList();
                if (scoring == Scoring.Generate)
                {
                    var prompts = chunk.Select(i => tok.Encode(template.Prompt(records[i].Instruction, records[i].Input), bos: true)).ToList();
                    var outputs = TextGenerator.Generate(model, prompts, new GenerationOptions { MaxNewTokens = maxNewTokens, Greedy = true }, tok.EosId);
                    for (int j = 0; j < chunk.Count; j++)
                    {
                        string response = tok.Decode(outputs[j]).Trim();
                        predictions.Add(new Prediction(chunk[j], gold[chunk[j]], task.ExtractAnswer(response), response));
                    }
                }
                else
                {
                    foreach (int i in chunk)
                        predictions.Add(ScoreByLikelihood(model, tok, template, task, records[i], i, gold[i]));
                }
                progress?.Invoke(predictions.Count);
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        var metrics = Metrics.Compute(task.Labels, gold, predictions.Select(p => p.Predicted).ToList());
        return new EvalResult(metrics, predictions);
    }

    /// <summary>All offered labels of one record in one forward pass: log p(continuation | prompt), summed over its tokens.</summary>
    static Prediction ScoreByLikelihood(CausalLM model, MolaTokenizer tok, PromptTemplate template, Benchmark task, InstructionRecord r, int index, string gold)
    {
        string prompt = template.Prompt(r.Instruction, r.Input);
        var candidates = task.CandidateLabels(prompt);
        var promptIds = tok.Encode(prompt, bos: true);
        var rows = new List<List<int>>();
        var labels = new List<List<long>>();
        foreach (var c in candidates)
        {
            // Prompt and continuation are tokenized as one text and the prompt's count of tokens is skipped, as
            // training tokenizes and masks them: the continuation tokenized on its own would start with
            // SentencePiece's dummy-prefix space, a token training never puts after the prompt (measured: that
            // cost about 20 nats and left a trained two-class adapter at a constant label).
            var ids = tok.Encode(prompt + task.Continuation(c), bos: true);
            rows.Add(ids);
            labels.Add([.. ids.Select((t, i) => i < promptIds.Count ? Losses.IgnoreIndex : (long)t)]);
        }
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var batch = Batching.PadRight(rows, 0, model.Device, labels);
        var logits = model.Forward(batch.InputIds, batch.AttentionMask).to(ScalarType.Float32);
        long T = logits.shape[1];
        var logp = nn.functional.log_softmax(logits.narrow(1, 0, T - 1), -1);
        var target = batch.Labels.narrow(1, 1, T - 1);
        var keep = target.ne(Losses.IgnoreIndex);
        var picked = logp.gather(2, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep;
        var sums = picked.sum(1).cpu().data<float>().ToArray();
        if (!sums.All(float.IsFinite)) throw CausalLM.NotFinite($"the log-likelihoods of record {index + 1} are");
        var scores = candidates.Select((c, k) => (c, (double)sums[k])).ToDictionary(x => x.c, x => x.Item2);
        string best = scores.MaxBy(kv => kv.Value).Key;
        return new Prediction(index, gold, best, task.Continuation(best), scores);
    }
}
