using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>Logits and losses of one forward pass. Losses are null when no labels were given.</summary>
public sealed record LmOutput(Tensor Logits, Tensor? CeLoss, Tensor? AuxLoss, Tensor? Loss) : IDisposable
{
    public void Dispose()
    {
        Logits.Dispose();
        CeLoss?.Dispose();
        AuxLoss?.Dispose();
        Loss?.Dispose();
    }
}
