using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>Decoding's bfloat16 product against the exact one: the products of bfloat16 numbers summed in float64 by
/// libtorch, then rounded to bfloat16. A float32 sum of 1000 terms is off by far less than the last rounding, so every
/// output must be within one bfloat16 step (2^-8 of its size) of the exact value, plus a float32 allowance.</summary>
public class Bf16GemvTests
{
    [Theory]
    [InlineData(1, 1000, 37)]   // 1000 = 31 x 32 + 8: the scalar tail runs
    [InlineData(1, 2048, 300)]  // the outputs split into blocks per thread
    [InlineData(1, 16, 5)]      // the tail alone
    [InlineData(1, 1001, 9)]    // an odd length: the last element has no pair
    [InlineData(1, 5632, 2051)] // a TinyLlama down_proj row, outputs not a multiple of four
    public void MatchesTheExactProductRoundedOnce(int rows, int inF, int outF)
    {
        torch.manual_seed(rows * 1000 + inF);
        var w = randn(outF, inF).to(ScalarType.BFloat16);
        var x = randn(1, rows, inF).to(ScalarType.BFloat16);
        using var _ = no_grad();
        Assert.True(Bf16Gemv.Applies(x, w) || !System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated);
        var y = Bf16Gemv.Linear(x, w);
        Assert.Equal(new long[] { 1, rows, outF }, y.shape);
        Assert.Equal(ScalarType.BFloat16, y.dtype);

        var exact = x.to(ScalarType.Float64).matmul(w.to(ScalarType.Float64).t());
        var magnitude = x.to(ScalarType.Float64).abs().matmul(w.to(ScalarType.Float64).abs().t());
        var error = (y.to(ScalarType.Float64) - exact).abs();
        var allowed = exact.abs() * Math.Pow(2, -8) + magnitude * 1e-6;
        Assert.True(error.le(allowed).all().item<bool>(), $"largest error {error.max().item<double>()}");
        // and it is the same function as libtorch's own bfloat16 product, to within its rounding
        Assert.True(TestUtil.MaxAbsDiff(y, nn.functional.linear(x.to(ScalarType.Float32), w.to(ScalarType.Float32)).to(ScalarType.BFloat16)) <=
            exact.abs().max().item<double>() * Math.Pow(2, -7));
    }

    [Fact]
    public void LeavesAutogradPrefillAndFloat32ToLibtorch()
    {
        var w = randn(16, 32).to(ScalarType.BFloat16);
        var x = randn(1, 32).to(ScalarType.BFloat16);
        Assert.False(Bf16Gemv.Applies(x.requires_grad_(true), w));                     // a gradient is wanted
        Assert.False(Bf16Gemv.Applies(randn(2, 32).to(ScalarType.BFloat16), w));        // two rows and more: a matrix product
        Assert.False(Bf16Gemv.Applies(randn(1, 32), randn(16, 32)));                    // float32
        Assert.False(Bf16Gemv.Applies(randn(1, 16).to(ScalarType.BFloat16), w.t()));    // a transposed view
    }

    /// <summary>Products from several threads at once (tests in parallel, a server beside a generator) share the decoding
    /// team: each caller must still get exactly its own product, whichever threads computed its chunks.</summary>
    [Fact]
    public void ConcurrentCallersGetTheirOwnProducts()
    {
        torch.manual_seed(11);
        using var _ = no_grad();
        var w = Enumerable.Range(0, 4).Select(i => randn(300 + 97 * i, 512).to(ScalarType.BFloat16)).ToArray();
        var x = Enumerable.Range(0, 4).Select(_ => randn(1, 512).to(ScalarType.BFloat16)).ToArray();
        var expected = Enumerable.Range(0, 4).Select(i => Bf16Gemv.Linear(x[i], w[i]).to(ScalarType.Float32).data<float>().ToArray()).ToArray();
        var wrong = new int[4];
        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            using var __ = no_grad();
            for (int repeat = 0; repeat < 50; repeat++)
            {
                using var y = Bf16Gemv.Linear(x[i], w[i]);
                using var yf = y.to(ScalarType.Float32);
                if (!yf.data<float>().ToArray().SequenceEqual(expected[i])) wrong[i]++;
            }
        });
        Assert.Equal(new int[4], wrong);
    }
}
