using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// MoLA's Switch-Transformer-style balance loss for one decoder layer: over the router logits of
/// all its adapted modules concatenated [M, E], with P = softmax, f_e = share of the top-k
/// selections that go to expert e and Pbar_e = mean of P[:, e]: <c>E * sum_e f_e * Pbar_e</c>.
/// </summary>
public static class LoadBalancing
{
    /// <param name="logits">[M, E] router logits (float32).</param>
    /// <param name="tokenMask">[M] true for rows to count; null: all rows. Deviation on purpose: the
    /// original counts padded positions too (its loss function took no mask); we leave them out so
    /// padding never changes the loss. Without padding the two are the same (tested).</param>
    public static Tensor LayerLoss(Tensor logits, int numExperts, int topK, Tensor? tokenMask = null)
    {
        using var scope = NewDisposeScope();
        var rows = tokenMask is null ? logits : logits.index(tokenMask);
        var probs = nn.functional.softmax(rows, 1);
        var selected = probs.topk(topK, dim: 1).indexes.reshape(-1);
        var counts = zeros(numExperts, ScalarType.Float32, logits.device)
            .index_add(0, selected, ones(selected.shape[0], ScalarType.Float32, logits.device), 1.0);
        var fraction = counts / counts.sum();
        var loss = (fraction * probs.mean([0])).sum() * numExperts;
        return loss.MoveToOuterDisposeScope();
    }
}
