using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>
/// <c>x W^T</c> for one row of x over bfloat16 weights, the product of batch-1 decoding: each weight is read once and
/// used once, so the time is that of reading W. libtorch 2.10's bfloat16 matrix-vector product reads
/// about 11 GB/s of weights on this project's machine where the memory gives 26 (one thread; bench/NOTES.md), which
/// made bfloat16 decoding slower per byte than float32. Here each 32 weights are widened to float32 (a bfloat16 is
/// the top half of a float32) and multiplied into float32 sums, one per output; the sums are rounded to bfloat16
/// once at the end, as libtorch's own product does. Only without autograd (decoding, evaluation), on the CPU.
/// </summary>
public static class Bf16Gemv
{
    /// <summary>Most rows of x taken this way. Measured (bench/NOTES.md): at 4 and 8 rows a dot product per row and
    /// output, the weights re-read from cache, ran at half libtorch's rate; batch-1 decoding is the case that gains.</summary>
    public const int MaxRows = 1;

    /// <summary>Whether <see cref="Linear"/> computes <c>linear(x, w)</c>: bfloat16 on the CPU, no gradient wanted,
    /// at most <see cref="MaxRows"/> rows, a contiguous weight, and 256-bit vectors on this machine.</summary>
    public static bool Applies(Tensor x, Tensor w) =>
        Vector256.IsHardwareAccelerated
        && w.dtype == ScalarType.BFloat16 && x.dtype == ScalarType.BFloat16
        && w.device_type == DeviceType.CPU && x.device_type == DeviceType.CPU
        && w.dim() == 2 && x.shape[^1] == w.shape[1] && x.numel() / w.shape[1] <= MaxRows
        && w.is_contiguous()
        && !((is_grad_enabled() && (x.requires_grad || w.requires_grad)));

    /// <summary><c>x W^T</c>, x [..., in] and W [out, in] in bfloat16: [..., out] in bfloat16.</summary>
    public static Tensor Linear(Tensor x, Tensor w)
    {
        long inF = w.shape[1], outF = w.shape[0];
        using var xf = x.reshape(-1, inF).to(ScalarType.Float32).contiguous();
        int rows = (int)xf.shape[0];
        using var y = empty(rows, outF, ScalarType.Float32);
        Multiply(Address(w), Address(xf), Address(y), rows, inF, outF);
        return y.to(ScalarType.BFloat16).view([.. x.shape.SkipLast(1), outF]);
    }

    /// <summary>Where a contiguous CPU tensor's first element lives (its bytes are its native memory, not a copy).</summary>
    static unsafe nint Address(Tensor t)
    {
        fixed (byte* p = t.bytes) return (nint)p;
    }

    /// <summary>y[t, o] = sum_i W[o, i] x[t, i], the outputs split into one block per libtorch thread.</summary>
    static void Multiply(nint w, nint x, nint y, int rows, long inF, long outF)
    {
        int parts = (int)Math.Min(Math.Max(1, get_num_threads()), Math.Max(1, outF / 64));
        long per = (outF + parts - 1) / parts;
        if (parts == 1) Block(w, x, y, rows, inF, outF, 0, outF);
        else Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = parts },
            p => Block(w, x, y, rows, inF, outF, p * per, Math.Min(outF, (p + 1) * per)));
    }

    static unsafe void Block(nint wPtr, nint xPtr, nint yPtr, int rows, long inF, long outF, long from, long to)
    {
        var w = (ushort*)wPtr;
        var x = (float*)xPtr;
        var y = (float*)yPtr;
        long vectorEnd = inF - inF % 32;
        for (long o = from; o < to; o++)
        {
            ushort* row = w + o * inF;
            for (int t = 0; t < rows; t++)
            {
                float* xt = x + t * inF;
                // Four independent sums, so that the multiply-adds do not wait on each other's latency.
                Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
                for (long i = 0; i < vectorEnd; i += 32)
                {
                    var (a, b) = Vector256.Widen(Vector256.Load(row + i));
                    var (c, d) = Vector256.Widen(Vector256.Load(row + i + 16));
                    acc0 = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(a, 16).AsSingle(), Vector256.Load(xt + i), acc0);
                    acc1 = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(b, 16).AsSingle(), Vector256.Load(xt + i + 8), acc1);
                    acc2 = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(c, 16).AsSingle(), Vector256.Load(xt + i + 16), acc2);
                    acc3 = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(d, 16).AsSingle(), Vector256.Load(xt + i + 24), acc3);
                }
                float sum = Vector256.Sum((acc0 + acc1) + (acc2 + acc3));
                for (long i = vectorEnd; i < inF; i++)
                    sum += BitConverter.Int32BitsToSingle(row[i] << 16) * xt[i];
                y[t * outF + o] = sum;
            }
        }
    }
}
