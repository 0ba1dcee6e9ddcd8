using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>Receives each MoLA layer's routing decisions when analysis asks for them.</summary>
public interface IRoutingObserver
{
    /// <param name="topIndices">[N, k] chosen experts per token (int64).</param>
    /// <param name="topWeights">[N, k] their renormalised fusion weights (float32).</param>
    void Add(int layer, string module, Tensor topIndices, Tensor topWeights, int numExperts);
}
