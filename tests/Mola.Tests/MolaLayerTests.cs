using Mola.Adapters;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class MolaLayerTests
{
    static (MolaLayer Layer, Models.Linear Base) FromFixture(Dictionary<string, Tensor> f, int E, int k, int r, double alpha)
    {
        int outF = (int)f["weight"].shape[0], inF = (int)f["weight"].shape[1];
        var baseLayer = new Models.Linear("base", inF, outF, ScalarType.Float32, CPU);
        var layer = new MolaLayer(0, "q_proj", inF, outF, E, k, r, alpha, 0.0, CPU);
        using var _ = torch.no_grad();
        baseLayer.weight.copy_(f["weight"]);
        layer.router.copy_(f["router.weight"]);
        layer.lora_A.copy_(torch.cat(Enumerable.Range(0, E).Select(e => f[$"lora_A.{e}.weight"]).ToArray(), 0));
        layer.lora_B.copy_(torch.cat(Enumerable.Range(0, E).Select(e => f[$"lora_B.{e}.weight"]).ToArray(), 1));
        return (layer, baseLayer);
    }

    static void AssertClose(Tensor actual, Tensor expected, double rel, string what)
    {
        double d = TestUtil.RelDiff(actual, expected);
        Assert.True(d < rel, $"{what}: relative difference {d:E2} exceeds {rel:E0}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MatchesReferenceLayerOutputsAndGradients(bool loop)
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("mola-layer.safetensors"));
        const int E = 4, k = 2, r = 6;
        var (layer, baseLayer) = FromFixture(f, E, k, r, 12);
        layer.UseLoopPath = loop;
        Tensor? logits = null;
        layer.RouterLogitsSink = (_, l) => logits = l.alias().DetachFromDisposeScope();
        var x = f["x"].clone().requires_grad_(true);
        var y = layer.Forward(x, baseLayer);
        Assert.NotNull(logits);
        var aux = LoadBalancing.LayerLoss(logits!, E, k);
        var loss = (y * f["upstream_grad"]).sum() + aux;
        loss.backward();

        AssertClose(y, f["y"], 1e-5, "y");
        AssertClose(logits!, f["router_logits"], 1e-5, "router logits");
        AssertClose(aux, f["aux_loss"], 1e-5, "aux loss");
        AssertClose(x.grad!, f["grad.x"], 1e-5, "grad x");
        AssertClose(layer.router.grad!, f["grad.router.weight"], 1e-5, "grad router");
        for (int e = 0; e < E; e++)
        {
            AssertClose(layer.lora_A.grad!.narrow(0, e * r, r), f[$"grad.lora_A.{e}.weight"], 1e-5, $"grad A{e}");
            AssertClose(layer.lora_B.grad!.narrow(1, e * r, r), f[$"grad.lora_B.{e}.weight"], 1e-5, $"grad B{e}");
        }
    }

    [Theory]
    [InlineData(37, 29, 5, 2, 3, 11)]   // odd sizes
    [InlineData(16, 24, 4, 1, 8, 7)]    // top-k = 1
    [InlineData(20, 12, 3, 3, 2, 9)]    // top-k = E
    [InlineData(8, 8, 1, 1, 4, 5)]      // a single expert
    [InlineData(64, 48, 8, 2, 8, 33)]
    public void FastPathEqualsLoopPath(int inF, int outF, int E, int k, int r, int tokens)
    {
        torch.manual_seed(1234 + inF);
        var baseLayer = new Models.Linear("base", inF, outF, ScalarType.Float32, CPU);
        var layer = new MolaLayer(1, "up_proj", inF, outF, E, k, r, 16, 0.0, CPU);
        using (torch.no_grad())
        {
            baseLayer.weight.copy_(torch.randn(outF, inF));
            layer.lora_B.copy_(torch.randn(outF, E * r) * 0.1); // B is zero at init: make it matter
        }
        var x = torch.randn(3, tokens, inF);
        var up = torch.randn(3, tokens, outF);

        (Tensor y, Tensor gx, Tensor gr, Tensor gA, Tensor gB) Run(bool loop)
        {
            layer.UseLoopPath = loop;
            layer.zero_grad();
            var xi = x.clone().requires_grad_(true);
            Tensor? logits = null;
            layer.RouterLogitsSink = (_, l) => logits = l.alias().DetachFromDisposeScope();
            var y = layer.Forward(xi, baseLayer);
            ((y * up).sum() + LoadBalancing.LayerLoss(logits!, E, k)).backward();
            return (y.detach(), xi.grad!.clone(), layer.router.grad!.clone(), layer.lora_A.grad!.clone(), layer.lora_B.grad!.clone());
        }

        var fast = Run(false);
        var slow = Run(true);
        Assert.True(TestUtil.RelDiff(fast.y, slow.y) < 1e-5);
        Assert.True(TestUtil.RelDiff(fast.gx, slow.gx) < 1e-5);
        Assert.True(TestUtil.RelDiff(fast.gr, slow.gr) < 1e-5);
        Assert.True(TestUtil.RelDiff(fast.gA, slow.gA) < 1e-5);
        Assert.True(TestUtil.RelDiff(fast.gB, slow.gB) < 1e-5);
    }

    [Fact]
    public void FreshLayerInitialisesLikeNnLinearWithZeroB()
    {
        torch.manual_seed(7);
        var layer = new MolaLayer(0, "q_proj", 100, 30, 4, 2, 8, 16, 0.05, CPU);
        double bound = 1.0 / Math.Sqrt(100);   // Kaiming-uniform with a = sqrt 5: U(-1/sqrt(in), 1/sqrt(in))
        Assert.True(layer.lora_A.abs().max().item<float>() <= bound);
        Assert.True(layer.lora_A.abs().max().item<float>() > 0.9 * bound);
        Assert.True(layer.router.abs().max().item<float>() <= bound);
        Assert.Equal(0f, layer.lora_B.abs().max().item<float>());
    }
}
