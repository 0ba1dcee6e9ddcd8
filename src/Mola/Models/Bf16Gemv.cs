using System.Runtime.CompilerServices;
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
    public static unsafe Tensor Linear(Tensor x, Tensor w)
    {
        long inF = w.shape[1], outF = w.shape[0];
        if (Vector512.IsHardwareAccelerated)
        {
            // x read and y written here, in bfloat16: no float32 copies from libtorch, one allocation per product.
            using var xc = x.contiguous();
            var y = empty([.. x.shape.SkipLast(1), outF], ScalarType.BFloat16);
            MultiplyPairs((ushort*)Address(xc), inF, [new Product(Address(w), Address(y), outF)]);
            return y;
        }
        using var xf = x.reshape(-1, inF).to(ScalarType.Float32).contiguous();
        int rows = (int)xf.shape[0];
        using var yf = empty(rows, outF, ScalarType.Float32);
        Multiply(Address(w), Address(xf), Address(yf), rows, inF, outF);
        return yf.to(ScalarType.BFloat16).view([.. x.shape.SkipLast(1), outF]);
    }

    /// <summary>Where a contiguous CPU tensor's first element lives (its bytes are its native memory, not a copy).</summary>
    internal static unsafe nint Address(Tensor t)
    {
        fixed (byte* p = t.bytes) return (nint)p;
    }

    /// <summary>Rows of W per chunk: 128 KiB to 1 MiB of weights, enough to amortise taking one, small enough to share
    /// out. Measured (bench/NOTES.md, 24 matrices 5632 x 2048, two threads, in-process rounds alternating): 64 rows read
    /// 3-7% faster than 32 (30.3 against 29.3 GB/s, 26.3 against 24.5 in a slower minute), 128 and 256 no faster.</summary>
    const long ChunkRows = 64;

    /// <summary>Outputs in chunks of <see cref="ChunkRows"/> shared out by
    /// <see cref="DecodeTeam"/> over libtorch's thread count. Measured (bench/NOTES.md): with one block per pool thread
    /// the caller waited for threads still waking (two threads read 21 GB/s where the kernel reads 28 back to back);
    /// with chunks from the .NET pool the caller took ~90% of them; the team's spinning helper is 0-5% faster still.</summary>
    static void Split(long outF, Action<long, long> block) =>
        DecodeTeam.Run(Chunks(outF), Math.Max(1, get_num_threads()), c => block(c * ChunkRows, Math.Min(outF, (c + 1) * ChunkRows)));

    /// <summary>The chunks of <see cref="ChunkRows"/> rows that <paramref name="rows"/> outputs make.</summary>
    static int Chunks(long rows) => (int)((rows + ChunkRows - 1) / ChunkRows);

    /// <summary>One weight matrix [<paramref name="Rows"/>, in] of a product and where its bfloat16 outputs go.</summary>
    internal readonly record struct Product(nint W, nint Y, long Rows);

    /// <summary>
    /// One row x (bfloat16, <paramref name="inF"/> long) against each of <paramref name="products"/>' matrices, all in one
    /// team job: q, k and v (gate and up) read the same input, so their chunks are shared out together and the threads
    /// meet once instead of once a matrix. With 512-bit vectors only (<see cref="Vector512.IsHardwareAccelerated"/>).
    /// </summary>
    internal static unsafe void MultiplyPairs(ushort* x, long inF, Product[] products)
    {
        var first = new int[products.Length + 1];   // the first chunk of each product; the last entry is the total
        for (int p = 0; p < products.Length; p++)
            first[p + 1] = first[p] + Chunks(products[p].Rows);
        DecodeTeam.Run(first[^1], Math.Max(1, get_num_threads()), c =>
        {
            int p = 0;
            while (c >= first[p + 1]) p++;
            var (w, y, rows) = products[p];
            long from = (c - first[p]) * ChunkRows;
            PairsBlock((ushort*)w, x, inF, (ushort*)y, from, Math.Min(rows, from + ChunkRows));
        });
    }

    /// <summary>
    /// One row x against two matrices of the same shape (gate and up), chunk by chunk the same rows of both, each chunk
    /// then handed to <paramref name="combine"/> (from, to) on the thread that computed it: what follows elementwise
    /// (the gate's activation times up) runs on both threads, on outputs still in cache.
    /// </summary>
    internal static unsafe void MultiplyTogether(ushort* x, long inF, Product a, Product b, Action<long, long> combine) =>
        DecodeTeam.Run(Chunks(a.Rows), Math.Max(1, get_num_threads()), c =>
        {
            long from = c * ChunkRows, to = Math.Min(a.Rows, from + ChunkRows);
            PairsBlock((ushort*)a.W, x, inF, (ushort*)a.Y, from, to);
            PairsBlock((ushort*)b.W, x, inF, (ushort*)b.Y, from, to);
            combine(from, to);
        });

    /// <summary>
    /// Outputs <paramref name="from"/> to <paramref name="to"/> of W x, one row of W at a time: the block is then one
    /// sequential read, which the hardware prefetcher follows best (measured against four rows a pass sharing x's loads:
    /// 23 against 16 GB/s from memory with one thread, 29 against 28 with two).
    /// Two neighbouring bfloat16 numbers are one 32-bit word: the low one widened is the word shifted left by 16, the high
    /// one the word with its low half cleared, two operations for 32 numbers where widening costs shuffles (twice the
    /// widening kernel's rate with the weights in cache). x is read the same way, as bfloat16 words, so that a row of W
    /// and x together stay inside the 32 KiB L1 cache: with x widened once into float32 halves (twice its bytes), a
    /// 5632-long row (down_proj) and x took 33 KiB and its product read 17.5 GB/s where the same kernel reads 32 over
    /// 2048-long rows; with x as words, 32.2 (bench/NOTES.md). The sums are the same either way.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // straight to optimised code: no slow first tier for a hot kernel
    static unsafe void PairsBlock(ushort* w, ushort* x, long inF, ushort* y, long from, long to)
    {
        var high = Vector512.Create(0xFFFF0000u);
        long pairs = inF / 2 - inF / 2 % 16;   // pairs the vectors take; the elements after them are summed one by one
        uint* xw = (uint*)x;
        for (long o = from; o < to; o++)
        {
            uint* r = (uint*)(w + o * inF);
            Vector512<float> e = default, d = default;
            for (long j = 0; j < pairs; j += 16)
            {
                var u = Vector512.Load(r + j);
                var v = Vector512.Load(xw + j);
                e = Vector512.FusedMultiplyAdd(Vector512.ShiftLeft(u, 16).AsSingle(), Vector512.ShiftLeft(v, 16).AsSingle(), e);
                d = Vector512.FusedMultiplyAdd((u & high).AsSingle(), (v & high).AsSingle(), d);
            }
            float sum = Vector512.Sum(e + d);
            // the row's elements past the vectors, then the sum rounded to bfloat16 (as libtorch rounds)
            for (long i = 2 * pairs; i < inF; i++) sum += Widen(w[o * inF + i]) * Widen(x[i]);
            y[o] = Round(sum);
        }
    }

    /// <summary>A float32 rounded to bfloat16 (to nearest, ties to even, NaN kept a NaN), as libtorch rounds.</summary>
    public static ushort Round(float value)
    {
        if (float.IsNaN(value)) return 0x7FC0;
        uint bits = BitConverter.SingleToUInt32Bits(value);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    /// <summary>A bfloat16 as float32 (exact: a bfloat16 is the top half of a float32).</summary>
    public static float Widen(ushort bf16) => BitConverter.Int32BitsToSingle(bf16 << 16);

    /// <summary>y[t, o] = sum_i W[o, i] x[t, i] with 256-bit vectors (machines without 512-bit ones), float32 in and out.</summary>
    static void Multiply(nint w, nint x, nint y, int rows, long inF, long outF) =>
        Split(outF, (from, to) => Block(w, x, y, rows, inF, outF, from, to));

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
