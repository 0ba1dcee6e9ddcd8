using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>One file of a checkpoint's weights (safetensors or a torch <c>.bin</c>): its tensors by name, each
/// read only when asked for.</summary>
public interface ITensorFile : IDisposable
{
    string Path { get; }
    IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    bool Contains(string name);

    /// <summary>Materialises one tensor, converted to <paramref name="dtype"/> (default: as stored) on <paramref name="device"/>.</summary>
    Tensor Read(string name, ScalarType? dtype = null, Device? device = null);

    /// <summary>Loads tensor <paramref name="name"/> into <paramref name="destination"/> (shape checked, NaN and
    /// infinities refused), using the mapped file's pages instead of a copy where the dtype is the stored one.</summary>
    void ShareInto(string name, Tensor destination, string needs = "expected");
}
