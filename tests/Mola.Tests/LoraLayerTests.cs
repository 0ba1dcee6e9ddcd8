using Mola.Adapters;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class LoraLayerTests
{
    [Theory]
    [InlineData(3)]     // fewer tokens than the rank: B^T stays a view
    [InlineData(120)]   // more: B^T is made contiguous for its gradient's sake
    public void MatchesTheFormulaAndItsGradients(int tokens)
    {
        const int inF = 20, outF = 12, r = 4;
        const double alpha = 12;
        torch.manual_seed(21 + tokens);
        var baseLayer = new Models.Linear("base", inF, outF, ScalarType.Float32, CPU);
        var layer = new LoraLayer(1, "up_proj", inF, outF, r, alpha, 0.0, CPU);
        using (torch.no_grad())
        {
            baseLayer.weight.copy_(torch.randn(outF, inF));
            layer.lora_B.copy_(torch.randn(outF, r) * 0.1);
        }
        var x = torch.randn(2, tokens, inF);
        var up = torch.randn(2, tokens, outF);

        var xi = x.clone().requires_grad_(true);
        var y = layer.Forward(xi, baseLayer);
        (y * up).sum().backward();

        // y = x W^T + (alpha / r) (x A^T) B^T, written out on copies of the parameters.
        var xr = x.clone().requires_grad_(true);
        var a = layer.lora_A.detach().clone().requires_grad_(true);
        var b = layer.lora_B.detach().clone().requires_grad_(true);
        var want = xr.matmul(baseLayer.weight.t()) + xr.matmul(a.t()).matmul(b.t()) * (alpha / r);
        (want * up).sum().backward();

        Assert.Equal(want.shape, y.shape);
        Assert.True(TestUtil.RelDiff(y, want) < 1e-5, "y");
        Assert.True(TestUtil.RelDiff(xi.grad!, xr.grad!) < 1e-5, "grad x");
        Assert.True(TestUtil.RelDiff(layer.lora_A.grad!, a.grad!) < 1e-5, "grad A");
        Assert.True(TestUtil.RelDiff(layer.lora_B.grad!, b.grad!) < 1e-5, "grad B");
        Assert.Null(baseLayer.weight.grad);
    }

    [Fact]
    public void HalfPrecisionBaseAddsTheFloat32AdapterInTheBaseDtype()
    {
        const int inF = 16, outF = 8, r = 4;
        torch.manual_seed(4);
        var baseLayer = new Models.Linear("base", inF, outF, ScalarType.BFloat16, CPU);
        var layer = new LoraLayer(0, "q_proj", inF, outF, r, 16, 0.0, CPU) { Precision = AdapterPrecision.Float32 };   // mixed: MixedPrecisionTests
        using (torch.no_grad())
        {
            baseLayer.weight.copy_(torch.randn(outF, inF));
            layer.lora_B.copy_(torch.randn(outF, r) * 0.1);
        }
        var x = torch.randn(30, inF).to(ScalarType.BFloat16);
        var y = layer.Forward(x, baseLayer);
        var delta = x.to(ScalarType.Float32).matmul(layer.lora_A.t()).matmul(layer.lora_B.t()) * (16.0 / r);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        Assert.True(TestUtil.MaxAbsDiff(y, baseLayer.Base(x) + delta.to(ScalarType.BFloat16)) < 0.05);
    }
}
