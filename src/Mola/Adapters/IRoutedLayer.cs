using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>An adapter layer with a router (MoLA): what the adapter model needs for the balance loss (its layer, E and
/// top-k, and the logits of each forward), the routing statistics and the choice of forward path. Plain LoRA has none.</summary>
public interface IRoutedLayer : IAdapterLayer
{
    int Layer { get; }
    int NumExperts { get; }
    int TopK { get; }

    /// <summary>When true, the faithful port of the original per-expert loop runs instead of the fast path.</summary>
    bool UseLoopPath { get; set; }

    /// <summary>Where this layer's router logits [N, E] go during a forward pass (for the balance loss); null: nowhere.</summary>
    Action<IRoutedLayer, Tensor>? RouterLogitsSink { get; set; }

    /// <summary>Routing statistics hook; null (the default) costs nothing.</summary>
    IRoutingObserver? Observer { get; set; }
}
