using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>What every layer of one forward pass shares: rotary angles, the attention mask and the cache.</summary>
public sealed class ForwardContext
{
    public required Tensor Cos { get; init; }
    public required Tensor Sin { get; init; }
    /// <summary>[B, 1, T, past + T], true where a query may attend to a key; null when <see cref="Causal"/> says
    /// it all (or, for one new token, when it may see every key).</summary>
    public Tensor? Mask { get; init; }
    /// <summary>Each query sees itself and the keys before it, no others: no padding, no cache, no window in effect.</summary>
    public bool Causal { get; init; }
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

    /// <summary>Keeps only the batch rows <paramref name="rows"/> (finished requests leave a running batch).</summary>
    public void KeepRows(long[] rows)
    {
        using var index = torch.tensor(rows, device: _k[0]!.device);
        Replace(t => t.index_select(0, index));
    }

    /// <summary>Left-pads every layer with zero keys and values to <paramref name="length"/> positions
    /// (the caller masks them), so that caches of different lengths can share a batch.</summary>
    public void PadLeft(long length)
    {
        long extra = length - Length;
        if (extra > 0) Replace(t => nn.functional.pad(t, [0, 0, extra, 0]));
    }

    /// <summary>Drops the first <paramref name="count"/> positions (padding that no row needs any more).</summary>
    public void DropLeft(long count)
    {
        if (count > 0) Replace(t => t.narrow(2, count, t.shape[2] - count).contiguous());
    }

    /// <summary>Appends the rows of <paramref name="other"/>, a cache of the same length (a request joins the batch).</summary>
    public void AppendRows(KvCache other)
    {
        if (other.Length != Length) throw new ArgumentException($"caches of {Length} and {other.Length} positions");
        for (int i = 0; i < _k.Length; i++)
        {
            var k = cat([_k[i]!, other._k[i]!], 0).DetachFromDisposeScope();
            var v = cat([_v[i]!, other._v[i]!], 0).DetachFromDisposeScope();
            _k[i]!.Dispose();
            _v[i]!.Dispose();
            (_k[i], _v[i]) = (k, v);
        }
    }

    void Replace(Func<Tensor, Tensor> f)
    {
        for (int i = 0; i < _k.Length; i++)
        {
            var k = f(_k[i]!).DetachFromDisposeScope();
            var v = f(_v[i]!).DetachFromDisposeScope();
            _k[i]!.Dispose();
            _v[i]!.Dispose();
            (_k[i], _v[i]) = (k, v);
        }
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
