using System.Runtime.Intrinsics;
using Mola.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>
/// AdamW with PyTorch's update rule (decoupled weight decay, bias-corrected moments), written out so
/// that its whole state (moments and step) can be checkpointed to safetensors and resumed exactly.
/// <para>
/// The parameters, their gradients and both moments each live in one flat buffer: at construction
/// every parameter is moved into a slice of the flat parameter buffer (<c>set_</c>; the parameter
/// objects stay the same, so modules and checkpoints see nothing) and given a slice of the flat
/// gradient buffer as its <c>.grad</c>, into which autograd accumulates in place. Clipping and the
/// update are then a few operations over one tensor instead of a few per parameter: for the 84
/// parameters of the bench's 4-layer MoLA, clipping + update + zeroing went from 21 to 6 ms a step
/// (bench/NOTES.md). Element by element the arithmetic is the per-parameter one. Gradients are never
/// <c>null</c> here: a parameter that got no gradient in a step is updated with a zero gradient
/// (PyTorch skips it); every adapter parameter takes part in every forward pass, so this never
/// arises in training.
/// </para>
/// <para>
/// The update and the clipping norm allocate nothing per step: the update walks the flat buffers in chunks of
/// <see cref="ChunkElements"/> through one small scratch buffer for the denominator. Whole-buffer temporaries
/// (<c>sqrt(v)</c>, its quotient, the squared gradient) were 3 x 4 bytes a parameter of fresh pages every step,
/// over glibc's mmap threshold and so faulted in anew each time: ~98,000 page faults and 0.4-0.7 s a step for the
/// 33.5 M parameters of a 1.1B MoLA (bench/NOTES.md). The arithmetic per element is unchanged.
/// </para>
/// </summary>
public sealed class AdamW : IDisposable
{
    readonly Parameter[] _params;
    readonly Tensor _flat, _grad, _m, _v, _denom;
    readonly (long Offset, long Count)[] _slices;

    /// <summary>Elements per chunk of the update: 1 MiB of float32 per buffer, so a chunk's five slices stay in cache
    /// between the operations on them and the scratch buffer comes from the heap, not fresh pages.</summary>
    internal long ChunkElements { get; }

    public double LearningRate { get; set; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; }
    /// <summary>Optimizer steps taken.</summary>
    public long Steps { get; private set; }

    public AdamW(IEnumerable<Parameter> parameters, double learningRate) : this(parameters, learningRate, 1L << 18) { }

    /// <param name="chunkElements">Elements per chunk of the update (tests make it small, to cross chunk borders).</param>
    internal AdamW(IEnumerable<Parameter> parameters, double learningRate, long chunkElements)
    {
        _params = parameters.ToArray();
        LearningRate = learningRate;
        if (_params.Length == 0) throw new MolaException("the optimizer got no parameters to train");
        var device = _params[0].device;
        if (_params.Any(p => p.dtype != ScalarType.Float32 || p.device_type != device.type || p.device_index != device.index))
            throw new MolaException("the optimizer needs float32 parameters on one device (adapter weights are float32)");
        _slices = new (long, long)[_params.Length];
        long total = 0;
        for (int i = 0; i < _params.Length; i++)
        {
            _slices[i] = (total, _params[i].numel());
            total += _slices[i].Count;
        }
        _flat = empty(total, ScalarType.Float32, device).DetachFromDisposeScope();
        _grad = zeros(total, ScalarType.Float32, device).DetachFromDisposeScope();
        _m = zeros(total, ScalarType.Float32, device).DetachFromDisposeScope();
        _v = zeros(total, ScalarType.Float32, device).DetachFromDisposeScope();
        ChunkElements = Math.Max(1, Math.Min(chunkElements, total));
        _denom = empty(ChunkElements, ScalarType.Float32, device).DetachFromDisposeScope();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        for (int i = 0; i < _params.Length; i++)
        {
            var p = _params[i];
            var data = Slice(_flat, i);
            data.copy_(p);
            p.set_(data);
            p.grad = Slice(_grad, i);
        }
    }

    /// <summary>Parameter i's part of a flat buffer, in its shape.</summary>
    Tensor Slice(Tensor flat, int i) => flat.narrow(0, _slices[i].Offset, _slices[i].Count).view(_params[i].shape);

    /// <summary>Puts back any gradient that is no longer a view of the flat buffer (someone set <c>.grad</c>
    /// to null or replaced it): its values are copied into the flat buffer, which it then views again.</summary>
    void AdoptGradients()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        IntPtr storage = StorageOf(_grad);
        for (int i = 0; i < _params.Length; i++)
        {
            var p = _params[i];
            var g = p.grad;
            if (g is not null && StorageOf(g) == storage && g.storage_offset() == _slices[i].Offset && g.is_contiguous()) continue;
            var slot = Slice(_grad, i);
            if (g is null) slot.zero_();
            else slot.copy_(g);
            p.grad = slot;
        }
    }

    static IntPtr StorageOf(Tensor t)
    {
        using var storage = t.storage<float>();
        return storage.data_ptr();
    }

    /// <summary>Every gradient in one flat float32 tensor (a view: changing it changes the gradients).</summary>
    internal Tensor FlatGradients
    {
        get { AdoptGradients(); return _grad; }
    }

    /// <summary>Every parameter in one flat float32 tensor (a view, as <see cref="FlatGradients"/>).</summary>
    internal Tensor FlatParameters => _flat;

    public void ZeroGrad()
    {
        AdoptGradients();
        _grad.zero_();
    }

    public void Step() => Step(1, zeroGradients: false);

    /// <summary>
    /// One update with every gradient first multiplied by <paramref name="gradientScale"/> (the clipping factor of
    /// <see cref="ClipScale"/>), and the gradients zeroed after it when <paramref name="zeroGradients"/>: what
    /// <see cref="ClipGradNorm"/>, <see cref="Step()"/> and <see cref="ZeroGrad"/> do one after the other, with the same
    /// float32 roundings (g times the scale rounded to float32, as libtorch's <c>mul_</c> rounds it), in the one pass
    /// over the flat buffers that the update makes anyway. Clipping and zeroing were two more passes over the
    /// gradients (at the 33.5 M parameters of a 1.1B MoLA, 134 MB read and written, and 134 MB written; bench/NOTES.md).
    /// </summary>
    public void Step(double gradientScale, bool zeroGradients)
    {
        AdoptGradients();
        Steps++;
        double bc1 = 1 - Math.Pow(Beta1, Steps), bc2 = 1 - Math.Pow(Beta2, Steps);
        using var _ = no_grad();
        long total = _flat.shape[0];
        if (_flat.device_type == DeviceType.CPU && Vector512.IsHardwareAccelerated)
        {
            FusedStep(total, bc1, bc2, (float)gradientScale, zeroGradients);
            return;
        }
        if (gradientScale != 1) _grad.mul_(gradientScale);
        for (long at = 0; at < total; at += ChunkElements)
        {
            using var scope = NewDisposeScope();
            long n = Math.Min(ChunkElements, total - at);
            var (p, g, m, v) = (_flat.narrow(0, at, n), _grad.narrow(0, at, n), _m.narrow(0, at, n), _v.narrow(0, at, n));
            var denom = _denom.narrow(0, 0, n);
            if (WeightDecay != 0) p.mul_(1 - LearningRate * WeightDecay);
            m.mul_(Beta1).add_(g, alpha: 1 - Beta1);
            v.mul_(Beta2).addcmul_(g, g, 1 - Beta2);
            denom.copy_(v).sqrt_().div_(Math.Sqrt(bc2)).add_(Eps);   // (sqrt(v) / sqrt(bc2)) + eps, in place
            p.addcdiv_(m, denom, -LearningRate / bc1);
        }
        if (zeroGradients) _grad.zero_();
    }

    /// <summary>
    /// The same update in one pass over the four flat buffers, in C#, the chunks shared over libtorch's thread count:
    /// libtorch's nine operations a chunk read and wrote ~12 buffer lengths where this reads four and writes three
    /// (at the 33.5 M parameters of a 1.1B MoLA, ~100 ms of its step; bench/NOTES.md). Per element the operations of
    /// the libtorch path, each rounded to float32 as there (the products with the scalars fused into the adds, as
    /// libtorch's vectorised add and addcmul do); tested against TorchSharp's AdamW.
    /// </summary>
    void FusedStep(long total, double bc1, double bc2, float gradientScale, bool zeroGradients)
    {
        var k = new FusedConstants(gradientScale, zeroGradients, (float)(1 - LearningRate * WeightDecay), WeightDecay != 0, (float)Beta1, (float)(1 - Beta1),
            (float)Beta2, (float)(1 - Beta2), (float)Math.Sqrt(bc2), (float)Eps, (float)(-LearningRate / bc1));
        nint p = Bf16Gemv.Address(_flat), g = Bf16Gemv.Address(_grad), m = Bf16Gemv.Address(_m), v = Bf16Gemv.Address(_v);
        long chunk = ChunkElements;
        int chunks = (int)((total + chunk - 1) / chunk);
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, get_num_threads()) },
            c => FusedChunk(p, g, m, v, c * chunk, Math.Min(total, (c + 1) * chunk), k));
    }

    readonly record struct FusedConstants(float GradScale, bool ZeroGrad, float Decay, bool Decays, float B1, float A1, float B2, float A2, float RootBc2, float Eps, float Step);

    static unsafe void FusedChunk(nint pAddress, nint gAddress, nint mAddress, nint vAddress, long from, long to, FusedConstants k)
    {
        float* p = (float*)pAddress, g = (float*)gAddress, m = (float*)mAddress, v = (float*)vAddress;
        long i = from;
        bool scales = k.GradScale != 1;
        for (; i + 16 <= to; i += 16)
        {
            var gi = Vector512.Load(g + i);
            if (scales) gi *= k.GradScale;
            if (k.ZeroGrad) Vector512<float>.Zero.Store(g + i);
            var pi = Vector512.Load(p + i);
            if (k.Decays) pi *= k.Decay;
            var mi = Vector512.FusedMultiplyAdd(gi, Vector512.Create(k.A1), Vector512.Load(m + i) * k.B1);
            var vi = Vector512.FusedMultiplyAdd(Vector512.Create(k.A2) * gi, gi, Vector512.Load(v + i) * k.B2);
            var denom = Vector512.Sqrt(vi) / k.RootBc2 + Vector512.Create(k.Eps);
            pi = Vector512.FusedMultiplyAdd(Vector512.Create(k.Step), mi / denom, pi);
            mi.Store(m + i);
            vi.Store(v + i);
            pi.Store(p + i);
        }
        for (; i < to; i++)
        {
            float gi = scales ? g[i] * k.GradScale : g[i];
            if (k.ZeroGrad) g[i] = 0;
            float pi = k.Decays ? p[i] * k.Decay : p[i];
            m[i] = MathF.FusedMultiplyAdd(gi, k.A1, m[i] * k.B1);
            v[i] = MathF.FusedMultiplyAdd(k.A2 * gi, gi, v[i] * k.B2);
            p[i] = MathF.FusedMultiplyAdd(k.Step, m[i] / (MathF.Sqrt(v[i]) / k.RootBc2 + k.Eps), pi);
        }
    }

    /// <summary>Scales gradients so their global L2 norm is at most <paramref name="maxNorm"/> (as
    /// <c>clip_grad_norm_</c>); returns the norm before clipping.</summary>
    public double ClipGradNorm(double maxNorm)
    {
        double total = GradNorm();
        double scale = ClipScale(maxNorm, total);
        if (scale != 1)
        {
            using var _ = no_grad();
            _grad.mul_(scale);
        }
        return total;
    }

    /// <summary>The global L2 norm of the gradients (what <see cref="ClipGradNorm"/> returns), leaving them as they are.</summary>
    public double GradNorm()
    {
        AdoptGradients();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return linalg.vector_norm(_grad).item<float>();   // one read of the gradients, no squared copy
    }

    /// <summary>The factor <c>clip_grad_norm_</c> scales gradients of norm <paramref name="norm"/> by: 1 unless the norm
    /// exceeds <paramref name="maxNorm"/> (&gt; 0).</summary>
    public static double ClipScale(double maxNorm, double norm) => maxNorm > 0 && norm > maxNorm ? maxNorm / (norm + 1e-6) : 1;

    public void Save(string path)
    {
        using var scope = NewDisposeScope();
        var tensors = new List<KeyValuePair<string, Tensor>>();
        for (int i = 0; i < _params.Length; i++)
        {
            tensors.Add(new($"exp_avg.{i:D5}", Slice(_m, i)));
            tensors.Add(new($"exp_avg_sq.{i:D5}", Slice(_v, i)));
        }
        SafeTensorsFile.Save(path, tensors, new Dictionary<string, string> { ["step"] = Steps.ToString(), ["parameters"] = _params.Length.ToString() });
    }

    public void Load(string path)
    {
        using var f = SafeTensorsFile.Open(path);
        if (!f.Metadata.TryGetValue("parameters", out var n) || n != _params.Length.ToString())
            throw new MolaException($"{path}: optimizer state is for {n ?? "?"} parameters, the adapter has {_params.Length}");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        for (int i = 0; i < _params.Length; i++)
        {
            using var m = f.Read($"exp_avg.{i:D5}", ScalarType.Float32, _params[i].device);
            using var v = f.Read($"exp_avg_sq.{i:D5}", ScalarType.Float32, _params[i].device);
            if (!m.shape.SequenceEqual(_params[i].shape) || !v.shape.SequenceEqual(_params[i].shape))
                throw new MolaException($"{path}: exp_avg.{i:D5} or exp_avg_sq.{i:D5} has the wrong shape");
            Slice(_m, i).copy_(m);
            Slice(_v, i).copy_(v);
        }
        Steps = long.Parse(f.Metadata["step"]);
    }

    /// <summary>Frees the gradients and moments; the parameters keep viewing the flat parameter buffer.</summary>
    public void Dispose()
    {
        using (no_grad())
            foreach (var p in _params) p.grad = null;
        _grad.Dispose();
        _m.Dispose();
        _v.Dispose();
        _denom.Dispose();
        _flat.Dispose();   // the C# handle only: the parameters' views keep the storage alive
    }
}
