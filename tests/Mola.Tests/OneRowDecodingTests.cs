using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>Decoding's one-row RMSNorm and one-token rotary (C#, bfloat16) against libtorch's operations on the same
/// rows: a batch of two rows (or two positions) takes the libtorch path, one row the C# one, and each row's result
/// depends on that row alone. The rotary is the same roundings, bit for bit; the norm to within its summation order.</summary>
public class OneRowDecodingTests
{
    [Theory]
    [InlineData(false, 2048)]   // LLaMA: w times the bfloat16-rounded normed row
    [InlineData(true, 2048)]    // Gemma: (1 + w) in float32
    [InlineData(false, 5)]      // a length no vector divides
    public void RmsNormOfOneRowEqualsLibtorchs(bool gemma, int size)
    {
        torch.manual_seed(size + (gemma ? 1 : 0));
        var norm = new RmsNorm("norm", size, 1e-5, gemma, ScalarType.BFloat16, CPU);
        using var _ = no_grad();
        norm.weight.copy_((randn(size) * 0.3 + (gemma ? 0 : 1)).to(ScalarType.BFloat16));
        long elements = 0, equal = 0;
        for (int trial = 0; trial < 32; trial++)
        {
            // rows of very different sizes, as hidden states are (the scale comes from the row's own norm)
            var rows = (randn(2, size) * Math.Pow(4, trial % 8 - 3)).to(ScalarType.BFloat16);
            var both = norm.forward(rows.unsqueeze(0))[0, 0];                   // [1, 2, D]: libtorch's operations
            var one = norm.forward(rows.narrow(0, 0, 1).unsqueeze(0));          // [1, 1, D]: the one-row path
            Assert.Equal(new long[] { 1, 1, size }, one.shape);
            Assert.Equal(ScalarType.BFloat16, one.dtype);
            // Within one bfloat16 step of libtorch's everywhere (the sums of squares are added in another order, so
            // the norm can differ in its last float32 bit, and a rounding to bfloat16 move by one step)...
            var step = both.to(ScalarType.Float32).abs() * Math.Pow(2, -7);
            Assert.True((one.squeeze().to(ScalarType.Float32) - both.to(ScalarType.Float32)).abs().le(step).all().item<bool>(),
                $"trial {trial}: largest difference {TestUtil.MaxAbsDiff(one.squeeze(), both)}");
            elements += size;
            equal += one.squeeze().eq(both).sum().item<long>();
        }
        // ...and bit for bit almost everywhere (measured: 1 element of 65,536 differs, Gemma's).
        Assert.True(equal >= elements * 999 / 1000, $"{elements - equal} of {elements} elements differ");
    }

    [Fact]
    public void RmsNormOfOneRowIsTheFormula()
    {
        // Independent of both implementations: y = w * x / sqrt(mean(x^2) + eps), to bfloat16's precision.
        torch.manual_seed(7);
        var norm = new RmsNorm("norm", 64, 1e-6, false, ScalarType.BFloat16, CPU);
        using var _ = no_grad();
        norm.weight.copy_((randn(64) + 1).to(ScalarType.BFloat16));
        var x = randn(1, 1, 64).to(ScalarType.BFloat16);
        var xd = x.to(ScalarType.Float64);
        var expected = norm.weight.to(ScalarType.Float64) * xd / (xd.square().mean([-1], keepdim: true) + 1e-6).sqrt();
        var y = norm.forward(x).to(ScalarType.Float64);
        Assert.True((y - expected).abs().le(expected.abs() * Math.Pow(2, -7) + 1e-6).all().item<bool>());
    }

    [Theory]
    [InlineData(32, 64)]   // TinyLlama's query heads
    [InlineData(4, 64)]    // its key heads
    [InlineData(8, 128)]   // LLaMA-2-7B's head size
    public void RotaryOfOneTokenEqualsLibtorchsBitForBit(int heads, int headDim)
    {
        torch.manual_seed(heads * headDim);
        var rotary = new Rotary(headDim, 10000, CPU);
        using var _ = no_grad();
        var (cos, sin) = rotary.Angles(tensor(new long[] { 5, 1234 }).reshape(1, 2), ScalarType.BFloat16);   // [1, 1, 2, D]
        var x = randn(1, heads, 2, headDim).to(ScalarType.BFloat16);
        var both = Rotary.Apply(x, cos, sin);                                   // two positions: libtorch's operations
        for (int t = 0; t < 2; t++)
        {
            var one = Rotary.Apply(x.narrow(2, t, 1).contiguous(), cos.narrow(2, t, 1).contiguous(), sin.narrow(2, t, 1).contiguous());
            Assert.Equal(new long[] { 1, heads, 1, headDim }, one.shape);
            Assert.True(one.eq(both.narrow(2, t, 1)).all().item<bool>(), $"position {t}: largest difference {TestUtil.MaxAbsDiff(one, both.narrow(2, t, 1))}");
        }
    }

    [Fact]
    public void WithAGradientWantedTheLibtorchPathsRun()
    {
        var norm = new RmsNorm("norm", 8, 1e-5, false, ScalarType.BFloat16, CPU);
        using (no_grad()) norm.weight.fill_(1);
        var x = randn(1, 1, 8).to(ScalarType.BFloat16).requires_grad_(true);
        var y = norm.forward(x);
        y.sum().backward();
        Assert.NotNull(x.grad);
    }
}
