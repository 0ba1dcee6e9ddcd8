using Mola.Data;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Generation;

public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 128;
    /// <summary>Argmax decoding; otherwise sampling with the settings below.</summary>
    public bool Greedy { get; init; } = true;
    public double Temperature { get; init; } = 1.0;
    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches this (1 = off).</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Keep only the k most likely tokens (0 = off).</summary>
    public int TopK { get; init; }
    public long Seed { get; init; } = 42;
    /// <summary>Re-run the whole sequence every step instead of using the KV cache (for tests and checks).</summary>
    public bool NoCache { get; init; }

    public void Validate()
    {
        if (MaxNewTokens < 0) throw new MolaException(n => $"{n("max_new_tokens")} must be 0 or more, got {MaxNewTokens}");
        // Sampling runs in float32: a value that is 0 or infinite there (1e-300, 1e300) would divide the logits
        // into NaN, which libtorch reports only as a native error deep inside the draw.
        if (!Greedy && !PositiveInFloat32(Temperature))
            throw new MolaException(n => $"{n("temperature")} must be a positive number that float32 holds (1.4e-45 to 3.4e38), got {Number(Temperature)}");
        if (!PositiveInFloat32(TopP) || TopP > 1)
            throw new MolaException(n => $"{n("top_p")} must be in (0, 1] and at least 1.4e-45 (the smallest float32), got {Number(TopP)}");
        if (TopK < 0) throw new MolaException(n => $"{n("top_k_sampling")} must be 0 (off) or more, got {TopK}");
    }

    static bool PositiveInFloat32(double x) => (float)x > 0 && float.IsFinite((float)x);

    static string Number(double x) => x.ToString(System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>
/// Autoregressive decoding with a KV cache: the prompts (left-padded into one batch) are run once,
/// then one token at a time; each row stops at EOS or after MaxNewTokens.
/// </summary>
public static class TextGenerator
{
    /// <param name="afterStep">Called after each decoding step with the number of steps taken (1 after the prompt's
    /// prefill and first token): progress, or timing the tokens after the first as `mola bench` does.</param>
    /// <returns>The generated token ids of each prompt (EOS not included).</returns>
    public static List<List<int>> Generate(CausalLM model, IReadOnlyList<List<int>> prompts, GenerationOptions options, int eosId, int padId = 0,
        Action<int>? afterStep = null)
    {
        options.Validate();
        if (prompts.Count == 0) return [];
        if (prompts.Any(p => p.Count == 0)) throw new MolaException("a prompt has no tokens (it needs at least BOS)");
        var device = model.Device;
        int B = prompts.Count;
        var generated = Enumerable.Range(0, B).Select(_ => new List<int>()).ToList();
        var done = new bool[B];
        using var generator = new torch.Generator((ulong)options.Seed, device);
        using var _ = no_grad();
        using var cache = options.NoCache ? null : new KvCache(model.Config.NumHiddenLayers);
        var (ids, mask) = Batching.PadLeft(prompts.ToList(), padId, device);
        var input = ids;
        try
        {
            for (int step = 0; step < options.MaxNewTokens; step++)
            {
                using var scope = NewDisposeScope();
                var logits = model.Forward(input, mask, cache);
                var last = logits.select(1, logits.shape[1] - 1).to(ScalarType.Float32);     // [B, V]
                // Damaged weights or an overflow (float16) would otherwise decode as garbage text and exit 0.
                if (!torch.isfinite(last).all().item<bool>())
                    throw CausalLM.NotFinite($"the logits for generated token {step + 1} are");
                var next = options.Greedy ? last.argmax(-1) : Sample(last, options, generator);
                var nextIds = next.cpu().data<long>().ToArray();
                for (int b = 0; b < B; b++)
                {
                    if (done[b]) continue;
                    if (nextIds[b] == eosId) done[b] = true;
                    else generated[b].Add((int)nextIds[b]);
                }
                afterStep?.Invoke(step + 1);
                if (done.All(d => d)) break;
                // Finished rows keep stepping with a masked pad token, so the batch stays rectangular.
                var stepIds = tensor(nextIds.Select((t, b) => done[b] ? padId : t).ToArray(), [B, 1], device: device);
                var stepMask = tensor(done.Select(d => d ? 0L : 1L).ToArray(), [B, 1], device: device);
                var newMask = cat([mask, stepMask], 1).DetachFromDisposeScope();
                var newInput = (cache is null ? cat([input, stepIds], 1) : stepIds).DetachFromDisposeScope();
                mask.Dispose();
                if (!ReferenceEquals(input, ids)) input.Dispose();
                mask = newMask;
                input = newInput;
            }
        }
        finally
        {
            mask.Dispose();
            if (!ReferenceEquals(input, ids)) input.Dispose();
            ids.Dispose();
        }
        return generated;
    }

    /// <summary>Temperature, then top-k, then top-p (nucleus) filtering, then one draw per row.</summary>
    internal static Tensor Sample(Tensor logits, GenerationOptions o, torch.Generator generator)
    {
        // Shifted so the largest logit is 0: a small temperature then sends the others to -inf, never to NaN.
        var scaled = (logits - logits.amax([-1], keepdim: true)) / o.Temperature;
        if (o.TopK > 0 && o.TopK < scaled.shape[^1])
        {
            var kth = scaled.topk(o.TopK, dim: -1).values.select(-1, o.TopK - 1).unsqueeze(-1);
            scaled = scaled.masked_fill(scaled.lt(kth), double.NegativeInfinity);
        }
        if (o.TopP < 1.0)
        {
            var (sorted, order) = scaled.sort(-1, descending: true);
            var cumulative = nn.functional.softmax(sorted, -1).cumsum(-1);
            // Drop a token when the tokens before it already reach top-p (the first one always stays).
            var drop = (cumulative - nn.functional.softmax(sorted, -1)).ge(o.TopP);
            var dropInOrder = zeros_like(drop).scatter(-1, order, drop);
            scaled = scaled.masked_fill(dropInOrder, double.NegativeInfinity);
        }
        var probs = nn.functional.softmax(scaled, -1);
        return multinomial(probs, 1, false, generator).squeeze(-1);
    }
}
