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

/// <summary>Keys and values of earlier positions, per layer, for incremental decoding. Each layer's keys and values
/// live in a buffer with room for more positions, so that a new token's are copied in place instead of the whole
/// cache being copied into a new tensor at every token; the buffer doubles when full.</summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _k, _v;
    readonly long[] _length;

    public KvCache(int layers)
    {
        _k = new Tensor?[layers];
        _v = new Tensor?[layers];
        _length = new long[layers];
    }

    /// <summary>Positions already cached.</summary>
    public long Length => _length[0];

    /// <summary>Appends this step's keys and values [B, kv_heads, T, hd] and returns the whole sequence's (views of
    /// the cache: valid until the next append).</summary>
    public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
    {
        long length = _length[layer], T = k.shape[2];
        Reserve(layer, k.shape[0], k.shape[1], T, k.shape[3], k.dtype, k.device);
        using (var slot = _k[layer]!.narrow(2, length, T)) slot.copy_(k.detach());
        using (var slot = _v[layer]!.narrow(2, length, T)) slot.copy_(v.detach());
        _length[layer] = length + T;
        return (_k[layer]!.narrow(2, 0, length + T), _v[layer]!.narrow(2, 0, length + T));
    }

    /// <summary>
    /// One new position of layer <paramref name="layer"/> for batch-1 decoding that writes its key and value itself
    /// (<see cref="OneTokenLayer"/>): the layer's buffers [1, kv_heads, capacity, head_dim] (contiguous) and the position
    /// to write at, now counted as cached.
    /// </summary>
    internal (Tensor K, Tensor V, long Position) AppendOne(int layer, long kvHeads, long headDim, ScalarType dtype, Device device)
    {
        Reserve(layer, 1, kvHeads, 1, headDim, dtype, device);
        long position = _length[layer]++;
        return (_k[layer]!, _v[layer]!, position);
    }

    /// <summary>Room for <paramref name="T"/> more positions in layer <paramref name="layer"/>'s buffers (doubling them when full).</summary>
    void Reserve(int layer, long batch, long kvHeads, long T, long headDim, ScalarType dtype, Device device)
    {
        long length = _length[layer];
        if (_k[layer] is { } bufK && bufK.shape[2] >= length + T) return;
        long capacity = Math.Max(length + T, 2 * (_k[layer]?.shape[2] ?? 0));
        long[] shape = [batch, kvHeads, capacity, headDim];
        var k = empty(shape, dtype, device).DetachFromDisposeScope();
        var v = empty(shape, dtype, device).DetachFromDisposeScope();
        if (_length[layer] > 0)
        {
            using var scope = NewDisposeScope();
            k.narrow(2, 0, _length[layer]).copy_(Valid(_k, layer));
            v.narrow(2, 0, _length[layer]).copy_(Valid(_v, layer));
        }
        _k[layer]?.Dispose();
        _v[layer]?.Dispose();
        (_k[layer], _v[layer]) = (k, v);
    }

    /// <summary>The cached positions of one layer (a view of its buffer).</summary>
    Tensor Valid(Tensor?[] buffers, int layer) => buffers[layer]!.narrow(2, 0, _length[layer]);

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
            using var scope = NewDisposeScope();
            Set(i, cat([Valid(_k, i), other.Valid(other._k, i)], 0), cat([Valid(_v, i), other.Valid(other._v, i)], 0));
        }
    }

    /// <summary>Replaces every layer's positions by <paramref name="f"/> of them (new tensors, exactly full).</summary>
    void Replace(Func<Tensor, Tensor> f)
    {
        for (int i = 0; i < _k.Length; i++)
        {
            using var scope = NewDisposeScope();
            Set(i, f(Valid(_k, i)), f(Valid(_v, i)));
        }
    }

    void Set(int layer, Tensor k, Tensor v)
    {
        k = k.contiguous().DetachFromDisposeScope();
        v = v.contiguous().DetachFromDisposeScope();
        _k[layer]?.Dispose();
        _v[layer]?.Dispose();
        (_k[layer], _v[layer], _length[layer]) = (k, v, k.shape[2]);
    }

    public void Dispose()
    {
        for (int i = 0; i < _k.Length; i++)
        {
            _k[i]?.Dispose();
            _v[i]?.Dispose();
            _k[i] = _v[i] = null;
            _length[i] = 0;
        }
    }
}
