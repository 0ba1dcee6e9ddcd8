using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>What an adapter puts around a frozen linear map: it receives the input and the base
/// layer and returns the layer's output (base output plus its own contribution).</summary>
public interface ILinearAdapter
{
    Tensor Forward(Tensor x, Linear baseLayer);
}

/// <summary>An adapter that adds its output for one token of batch-1 decoding straight into the base product's
/// bfloat16 outputs in native memory (<see cref="OneTokenLayer"/>), as its own one-token path computes it.</summary>
internal interface IOneTokenAdapter
{
    /// <summary>Whether it can now: no autograd, no dropout in training mode, no routing observer, its weights
    /// contiguous on the CPU.</summary>
    bool OneTokenReady { get; }

    /// <summary>y (bfloat16, out features) += the adapter's output for the input row x (float32, in features).</summary>
    unsafe void AddOneToken(float* x, ushort* y);
}
