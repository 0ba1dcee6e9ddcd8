using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>What an adapter puts around a frozen linear map: it receives the input and the base
/// layer and returns the layer's output (base output plus its own contribution).</summary>
public interface ILinearAdapter
{
    Tensor Forward(Tensor x, Linear baseLayer);
}
