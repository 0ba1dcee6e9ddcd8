using Mola.Models;

namespace Mola.Cli.Bench;

/// <summary>
/// The arithmetic a training step needs, for model-FLOP utilisation (achieved FLOP/s over the matmul rate).
/// Counted: every product of the frozen base's linear maps (q, k, v, o, gate, up, down, the head) forward and
/// for the input gradient, 2 x 2 x weights x tokens; attention's four products (Q K^T and P V forward, their
/// input gradients backward: six of 2 T^2 per head dimension), halved because a causal query sees half the keys;
/// and the adapter's own products, forward and both gradients: each of its weights is used in three products of
/// 2 x tokens (A and the router read the input, B writes the output; MoLA's batched path computes all experts,
/// so its count is that of every expert). Elementwise work (norms, softmax, SiLU, rotary) is not counted:
/// it is what the utilisation shows the cost of.
/// </summary>
public static class ModelFlop
{
    /// <summary>Weights of the base's linear maps (what decoding reads once per token), head included.</summary>
    public static long LinearWeights(ModelConfig c)
    {
        long d = c.HiddenSize, q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim, f = c.IntermediateSize;
        long perLayer = d * q + 2 * d * kv + q * d + 3 * d * f;
        return c.NumHiddenLayers * perLayer + (long)c.VocabSize * d;
    }

    /// <summary>Operations of one step over one sequence of <paramref name="tokens"/> tokens with an adapter of
    /// <paramref name="adapterWeights"/> trainable weights (0: the frozen step).</summary>
    public static double Step(ModelConfig c, long tokens, long adapterWeights)
    {
        double linear = 4.0 * LinearWeights(c) * tokens;
        double attention = c.NumHiddenLayers * 6.0 * tokens * tokens * c.NumAttentionHeads * c.HeadDim;
        double adapter = 6.0 * adapterWeights * tokens;
        return linear + attention + adapter;
    }
}
