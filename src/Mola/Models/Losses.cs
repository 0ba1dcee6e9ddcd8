using static TorchSharp.torch;

namespace Mola.Models;

public static class Losses
{
    public const long IgnoreIndex = -100;

    /// <summary>Mean next-token cross-entropy in float32 (position t predicts label t + 1; -100 ignored).</summary>
    public static Tensor CausalLm(Tensor logits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        long V = logits.shape[^1];
        var shifted = logits.narrow(1, 0, logits.shape[1] - 1).to(ScalarType.Float32).reshape(-1, V);
        var targets = labels.narrow(1, 1, labels.shape[1] - 1).to(logits.device).reshape(-1);
        return nn.functional.cross_entropy(shifted, targets, ignore_index: IgnoreIndex).MoveToOuterDisposeScope();
    }

    /// <summary>Summed next-token NLL and the number of predicted tokens (for perplexity over many batches).</summary>
    public static (double Sum, long Count) CausalLmSum(Tensor logits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        long V = logits.shape[^1];
        var shifted = logits.narrow(1, 0, logits.shape[1] - 1).to(ScalarType.Float32).reshape(-1, V);
        var targets = labels.narrow(1, 1, labels.shape[1] - 1).to(logits.device).reshape(-1);
        var sum = nn.functional.cross_entropy(shifted, targets, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum);
        long count = targets.ne(IgnoreIndex).sum().item<long>();
        return (sum.to(ScalarType.Float64).item<double>(), count);
    }
}
