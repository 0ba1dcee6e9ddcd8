using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>What every layer of one forward pass shares: rotary angles, the attention mask and the cache.</summary>
public sealed class ForwardContext
{
    public required Tensor Cos { get; init; }
    public required Tensor Sin { get; init; }
    /// <summary>[B, 1, T, past + T], true where a query may attend to a key.</summary>
    public required Tensor Mask { get; init; }
    public KvCache? Cache { get; init; }
}

/// <summary>Keys and values of earlier positions, per layer, for incremental decoding.</summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _k, _v;

    public KvCache(int layers)
    {
        _k = new Tensor?[layers];
        _v = new Tensor?[layers];
    }

    /// <summary>Positions already cached.</summary>
    public long Length => _k[0] is { } k ? k.shape[2] : 0;

    /// <summary>Appends this step's keys and values [B, kv_heads, T, hd] and returns the whole sequence's.</summary>
    public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
    {
        var oldK = _k[layer];
        var oldV = _v[layer];
        var newK = oldK is null ? k.detach().clone() : cat([oldK, k.detach()], 2);
        var newV = oldV is null ? v.detach().clone() : cat([oldV, v.detach()], 2);
        oldK?.Dispose();
        oldV?.Dispose();
        _k[layer] = newK.DetachFromDisposeScope();
        _v[layer] = newV.DetachFromDisposeScope();
        return (newK.alias(), newV.alias());
    }

    public void Dispose()
    {
        for (int i = 0; i < _k.Length; i++)
        {
            _k[i]?.Dispose();
            _v[i]?.Dispose();
            _k[i] = _v[i] = null;
        }
    }
}
