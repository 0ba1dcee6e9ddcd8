using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Evaluation;

public sealed record PerplexityResult(double Nll, double Perplexity, long Tokens, int Texts);

public static class Perplexity
{
    /// <summary>Texts of a JSONL file of <c>{"text": ...}</c> objects.</summary>
    public static List<string> ReadTexts(string path)
    {
        var texts = Jsonl.ReadObjects(path).Select(r => Jsonl.RequireString(r.Obj, "text", path, r.Line)).ToList();
        if (texts.Count == 0) throw new MolaException($"{path}: no records");
        return texts;
    }

    /// <summary>Each text is BOS + its tokens; every token after BOS is predicted. Returns the mean NLL
    /// over all predicted tokens and its exponential.</summary>
    public static PerplexityResult Compute(CausalLM model, MolaTokenizer tok, IReadOnlyList<string> texts, int batchSize = 8, Action<int>? progress = null)
    {
        if (batchSize < 1) throw new MolaException(n => $"{n("batch_size")} must be at least 1");
        int maxLen = model.Config.MaxPositionEmbeddings;
        var encoded = texts.Select(t => tok.Encode(t, bos: true)).Select(ids => ids.Count > maxLen ? ids.GetRange(0, maxLen) : ids).ToList();
        double sum = 0;
        long count = 0;
        using var _ = torch.no_grad();
        for (int start = 0; start < encoded.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var batch = Batching.PadRight(encoded.Skip(start).Take(batchSize).ToList(), padId: 0, model.Device);
            var logits = model.Forward(batch.InputIds, batch.AttentionMask);
            var (s, n) = Losses.CausalLmSum(logits, batch.Labels);
            sum += s;
            count += n;
            progress?.Invoke(Math.Min(start + batchSize, encoded.Count));
        }
        if (count == 0) throw new MolaException("no tokens to predict (every text is empty)");
        double nll = sum / count;
        if (!double.IsFinite(nll)) throw CausalLM.NotFinite($"the mean NLL over {count} tokens is");
        // exp overflows past a mean NLL of 709 nats (a model far worse than uniform): JSON cannot carry infinity.
        if (!double.IsFinite(Math.Exp(nll))) throw new MolaException($"the mean NLL is {nll:G6} nats per token, whose perplexity exp(nll) is past what a double holds");
        return new PerplexityResult(nll, Math.Exp(nll), count, texts.Count);
    }
}
