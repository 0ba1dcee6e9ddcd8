using System.Text.Json;
using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>
/// The adapters' mixed precision over a bfloat16 base (<see cref="AdapterPrecision.Mixed"/>): what autocast computes,
/// written out here with explicit casts and differentiated by autograd (not FastForward's code: separate router and
/// expert products, a softmax over all experts then the top-k renormalised, the gate widened by repeat_interleave).
/// </summary>
[Collection(RunsAloneCollection.Name)]   // two runs of one seed compare their draws of the global generator
public class MixedPrecisionTests(ITestOutputHelper output)
{
    const ScalarType BF16 = ScalarType.BFloat16, F32 = ScalarType.Float32;

    /// <summary>Whether every value of a float32 tensor is a bfloat16 value: what a gradient that a bfloat16 product
    /// computed and the weight cast's backward widened to float32 must be (a float32 product's almost never is).</summary>
    static bool AllBf16Values(Tensor t) => t.to(BF16).to(F32).eq(t).all().item<bool>();

    static void AssertClose(Tensor actual, Tensor expected, double rel, string what)
    {
        double d = TestUtil.RelDiff(actual, expected);
        Assert.True(d < rel, $"{what}: relative difference {d:E2} exceeds {rel:E1}");
    }

    /// <summary>MoLA under autocast: the three products in bfloat16 on bfloat16 copies of the float32 weights, the
    /// router's logits widened to float32 for softmax and top-k, the gate (with alpha / r) applied in float32 and the
    /// gated rows rounded once to bfloat16 for the B product, whose bfloat16 result is added to the base output.</summary>
    static Tensor MolaReference(Tensor x, Tensor w, Tensor router, Tensor a, Tensor b, int E, int k, int r, double scaling)
    {
        var xb = x.reshape(-1, x.shape[^1]);
        var logits = xb.matmul(router.to(BF16).t()).to(F32);
        var (topW, topI) = nn.functional.softmax(logits, 1).topk(k, dim: 1);
        topW = topW / topW.sum(1, keepdim: true);
        var gate = torch.zeros(xb.shape[0], E).scatter(1, topI, topW) * scaling;
        var h = xb.matmul(a.to(BF16).t());                                               // [N, E r] in bfloat16
        var gated = (h.to(F32) * gate.repeat_interleave(r, dim: 1)).to(BF16);
        var y = xb.matmul(w.t()) + gated.matmul(b.to(BF16).t());
        return y.view(x.shape.SkipLast(1).Append(w.shape[0]).ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]   // router merged into A, B^T made contiguous (training on many tokens)
    public void MolaLayerComputesTheAutocastFormulaAndItsGradients(bool relayout)
    {
        const int inF = 48, outF = 40, E = 5, k = 2, r = 4;
        torch.manual_seed(31);
        var baseLayer = new Models.Linear("base", inF, outF, BF16, CPU);
        var layer = new MolaLayer(0, "q_proj", inF, outF, E, k, r, 16, 0.0, CPU) { Relayout = relayout };
        using (torch.no_grad())
        {
            baseLayer.weight.copy_(torch.randn(outF, inF) / Math.Sqrt(inF));
            layer.lora_B.copy_(torch.randn(outF, E * r) * 0.1);
        }
        Tensor? logits = null;
        layer.RouterLogitsSink = (_, l) => logits = l.alias().DetachFromDisposeScope();
        var x0 = torch.randn(2, 60, inF).to(BF16);
        var upstream = torch.randn(2, 60, outF).to(BF16);

        var x = x0.clone().requires_grad_(true);
        var y = layer.Forward(x, baseLayer);
        y.backward([upstream]);

        var xr = x0.clone().requires_grad_(true);
        var router = layer.router.detach().clone().requires_grad_(true);
        var a = layer.lora_A.detach().clone().requires_grad_(true);
        var b = layer.lora_B.detach().clone().requires_grad_(true);
        var want = MolaReference(xr, baseLayer.weight, router, a, b, E, k, r, 16.0 / r);
        want.backward([upstream]);

        Assert.Equal(BF16, y.dtype);
        Assert.Equal(F32, logits!.dtype);
        // The same roundings at the same places: the two differ only where a float32 sum in another order (the
        // concatenated product, softmax then top-k against top-k then softmax) lands on the other side of a bfloat16
        // rounding boundary; one unit of bfloat16 (2^-8 relative) bounds what that moves.
        const double rel = 1.0 / 256;
        AssertClose(y, want, rel, "y");
        AssertClose(logits, xr.reshape(-1, inF).matmul(router.to(BF16).t()).to(F32), rel, "router logits");
        // x's gradient sums three bfloat16 products (base, router, experts; two in the relayout), rounded after each add
        // in the order autograd meets them, and the reference meets them in another: up to two roundings on each side,
        // each within 2^-8 of the value, so 2^-6.
        AssertClose(x.grad!, xr.grad!, 1.0 / 64, "grad x");
        AssertClose(layer.router.grad!, router.grad!, rel, "grad router");
        AssertClose(layer.lora_A.grad!, a.grad!, rel, "grad A");
        AssertClose(layer.lora_B.grad!, b.grad!, rel, "grad B");
        // Float32 master weights whose gradients came from bfloat16 products (a float32 product's would not all be).
        Assert.Equal(F32, layer.lora_A.grad!.dtype);
        Assert.True(AllBf16Values(layer.router.grad!) && AllBf16Values(layer.lora_A.grad!) && AllBf16Values(layer.lora_B.grad!));
        Assert.True(AllBf16Values(logits));

        // Float32 precision computes the adapter in float32 instead: its weight gradients are not bfloat16 values.
        layer.zero_grad();
        layer.Precision = AdapterPrecision.Float32;
        layer.Forward(x0.clone().requires_grad_(true), baseLayer).backward([upstream]);
        Assert.False(AllBf16Values(layer.lora_A.grad!));
        Assert.False(AllBf16Values(layer.lora_B.grad!));
    }

    [Theory]
    [InlineData(3)]     // fewer tokens than the rank: B^T stays a view
    [InlineData(90)]    // more: B^T made contiguous
    public void LoraLayerComputesTheAutocastFormulaAndItsGradients(int tokens)
    {
        const int inF = 36, outF = 28, r = 4;
        const double scaling = 12.0 / r;   // not a power of two: the scale's own rounding counts
        torch.manual_seed(32 + tokens);
        var baseLayer = new Models.Linear("base", inF, outF, BF16, CPU);
        var layer = new LoraLayer(1, "up_proj", inF, outF, r, 12, 0.0, CPU);
        using (torch.no_grad())
        {
            baseLayer.weight.copy_(torch.randn(outF, inF) / Math.Sqrt(inF));
            layer.lora_B.copy_(torch.randn(outF, r) * 0.1);
        }
        var x0 = torch.randn(2, tokens, inF).to(BF16);
        var upstream = torch.randn(2, tokens, outF).to(BF16);

        var x = x0.clone().requires_grad_(true);
        var y = layer.Forward(x, baseLayer);
        y.backward([upstream]);

        // y = x W^T + (alpha / r) (x A^T) B^T with both adapter products in bfloat16 on cast weights.
        var xr = x0.clone().requires_grad_(true);
        var a = layer.lora_A.detach().clone().requires_grad_(true);
        var b = layer.lora_B.detach().clone().requires_grad_(true);
        var want = xr.matmul(baseLayer.weight.t()) + (xr.matmul(a.to(BF16).t()) * scaling).matmul(b.to(BF16).t());
        want.backward([upstream]);

        const double rel = 1.0 / 256;   // as for MoLA: one bfloat16 unit, and x's gradient a sum in either order
        Assert.Equal(BF16, y.dtype);
        AssertClose(y, want, rel, "y");
        AssertClose(x.grad!, xr.grad!, 1.0 / 64, "grad x");
        AssertClose(layer.lora_A.grad!, a.grad!, rel, "grad A");
        AssertClose(layer.lora_B.grad!, b.grad!, rel, "grad B");
        Assert.True(AllBf16Values(layer.lora_A.grad!) && AllBf16Values(layer.lora_B.grad!));
        Assert.Null(baseLayer.weight.grad);
    }

    /// <summary>The loss curve of a MoLA run on the llama-tiny fixture with a bfloat16 base, the adapter in
    /// <paramref name="precision"/>; the same seed, data and schedule for every call.</summary>
    static double[] BfloatRun(AdapterPrecision precision, int steps)
    {
        string llama = TestUtil.Fixture("llama-tiny");
        var tok = MolaTokenizer.Load(llama);
        var records = InstructionRecord.Load(TestUtil.Fixture("train", "small.jsonl"));
        var data = InstructionDataset.Create(records, PromptTemplate.Alpaca, tok, new TokenizeOptions(64, true, true));
        using var model = ModelLoader.Load(llama, BF16);
        torch.manual_seed(3);
        var adapter = AdapterModel.Attach(model, TrainerTests.Mola(dropout: 0.05));
        adapter.SetPrecision(precision);
        string dir = TestUtil.TempDir();
        var options = new TrainingOptions { LearningRate = 1e-2, WarmupSteps = 1, MaxSteps = steps, BatchSize = 4, MicroBatchSize = 2, SaveSteps = 0, Seed = 3 };
        new Trainer(adapter, data, null, options, dir).Train();
        return [.. File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("loss").GetDouble())];
    }

    [Fact]
    public void MixedPrecisionTrainingFollowsTheFloat32AdaptersLossCurve()
    {
        const int steps = 12;
        var mixed = BfloatRun(AdapterPrecision.Mixed, steps);
        var full = BfloatRun(AdapterPrecision.Float32, steps);
        output.WriteLine("mixed   " + string.Join(" ", mixed.Select(l => l.ToString("F5"))));
        output.WriteLine("float32 " + string.Join(" ", full.Select(l => l.ToString("F5"))));
        // Both learn: the loss falls to under half its start (6.6 to about 2.2 here).
        Assert.True(mixed[^1] < 0.5 * mixed[0] && full[^1] < 0.5 * full[0]);
        // Step 1 and 2 see the same model: B starts at 0, so neither adapter adds anything, and the first update has
        // the warm-up's learning rate 0.
        Assert.Equal(full[..2], mixed[..2]);
        // From then on the two differ by what bfloat16 products change in the gradients: within one unit roundoff
        // of bfloat16 (2^-8, the layer's own bound against the autocast formula above) per update that has changed
        // the weights, accumulated. Measured: 4e-4 after one update, 3e-3 after ten (bound 3.9e-3 and 3.9e-2); an
        // adapter scaled twice or not gated moves the curve by tens of percent at once.
        for (int i = 2; i < steps; i++)
        {
            double rel = Math.Abs(mixed[i] - full[i]) / full[i], bound = (i - 1) * Math.Pow(2, -8);
            Assert.True(rel < bound, $"step {i + 1}: mixed {mixed[i]:F5} against float32 {full[i]:F5}, relative {rel:E2} over {bound:E2}");
        }
        // And the setting took effect: the curves are not the same computation.
        Assert.NotEqual(full, mixed);
    }
}
