using Mola.Adapters;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

[Collection(RunsAloneCollection.Name)]   // reseeds to reproduce a dropout mask
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
    [InlineData(false, false)]
    [InlineData(false, true)]   // router merged into A, B^T made contiguous (what training on many tokens takes)
    [InlineData(true, false)]
    public void MatchesReferenceLayerOutputsAndGradients(bool loop, bool relayout)
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("mola-layer.safetensors"));
        const int E = 4, k = 2, r = 6;
        var (layer, baseLayer) = FromFixture(f, E, k, r, 12);
        layer.UseLoopPath = loop;
        layer.Relayout = relayout;
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

    /// <summary>A random base linear and a MoLA layer around it (alpha 16), B made non-zero so that it matters
    /// (it is zero at initialisation). Draws from the global generator: seed before calling.</summary>
    static (Models.Linear Base, MolaLayer Layer) RandomLayer(int layer, string module, int inF, int outF, int E, int k, int r,
        double dropout, ScalarType baseDtype = ScalarType.Float32)
    {
        var baseLayer = new Models.Linear("base", inF, outF, baseDtype, CPU);
        var mola = new MolaLayer(layer, module, inF, outF, E, k, r, 16, dropout, CPU);
        using (torch.no_grad())
        {
            baseLayer.weight.copy_(torch.randn(outF, inF));
            mola.lora_B.copy_(torch.randn(outF, E * r) * 0.1);
        }
        return (baseLayer, mola);
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
        var (baseLayer, layer) = RandomLayer(1, "up_proj", inF, outF, E, k, r, 0.0);
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

    /// <summary>The fast path written out naively: base + scaling * sum over the chosen experts of w_e B_e A_e dropout(x),
    /// one expert at a time with a dense gate, from the same parameters (cloned into a separate graph).</summary>
    static Tensor Naive(Tensor x, Tensor w, Tensor router, Tensor a, Tensor b, int E, int k, int r, double scaling, Tensor? dropped = null)
    {
        var xf = x.reshape(-1, x.shape[^1]);
        var probs = nn.functional.softmax(xf.matmul(router.t()), 1);
        var (topW, topI) = probs.topk(k, dim: 1);
        topW = topW / topW.sum(1, keepdim: true);
        var y = xf.matmul(w.t());
        var xd = dropped ?? xf;
        for (int e = 0; e < E; e++)
        {
            var gate = (topW * topI.eq(e)).sum(1, keepdim: true);                       // w_e, or 0 when e is not chosen
            var expert = xd.matmul(a.narrow(0, e * r, r).t()).matmul(b.narrow(1, e * r, r).t());
            y = y + gate * expert * scaling;
        }
        return y.view(x.shape.SkipLast(1).Append(w.shape[0]).ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DropoutPathMatchesTheFormulaWithTheSameMask(bool relayout)
    {
        // With dropout on, the router reads x and the experts read dropout(x) (two products, whatever the relayout).
        // The layer's only random draw is its dropout mask, so reseeding reproduces the mask for the formula.
        const int inF = 24, outF = 20, E = 4, k = 2, r = 3, tokens = 40;
        const double p = 0.3;
        torch.manual_seed(11);
        var (baseLayer, layer) = RandomLayer(0, "v_proj", inF, outF, E, k, r, p);
        layer.Relayout = relayout;
        layer.train();
        var x = torch.randn(2, tokens / 2, inF);
        var up = torch.randn(2, tokens / 2, outF);

        var xi = x.clone().requires_grad_(true);
        torch.manual_seed(99);
        var y = layer.Forward(xi, baseLayer);
        (y * up).sum().backward();

        var xr = x.clone().requires_grad_(true);
        var (rr, ar, br) = (layer.router.detach().clone().requires_grad_(true), layer.lora_A.detach().clone().requires_grad_(true), layer.lora_B.detach().clone().requires_grad_(true));
        torch.manual_seed(99);
        var dropped = nn.functional.dropout(xr.reshape(-1, inF), p, training: true);
        var want = Naive(xr, baseLayer.weight, rr, ar, br, E, k, r, 16.0 / r, dropped);
        (want * up).sum().backward();

        Assert.True(TestUtil.RelDiff(y, want) < 1e-5, "y");
        Assert.True(TestUtil.RelDiff(xi.grad!, xr.grad!) < 1e-5, "grad x");
        Assert.True(TestUtil.RelDiff(layer.router.grad!, rr.grad!) < 1e-5, "grad router");
        Assert.True(TestUtil.RelDiff(layer.lora_A.grad!, ar.grad!) < 1e-5, "grad A");
        Assert.True(TestUtil.RelDiff(layer.lora_B.grad!, br.grad!) < 1e-5, "grad B");
        Assert.True(TestUtil.MaxAbsDiff(y, Naive(x, baseLayer.weight, rr, ar, br, E, k, r, 16.0 / r)) > 1e-3, "dropout changed nothing");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void FastPathMatchesTheNaiveFormulaOnManyTokens(bool gradEnabled)
    {
        // 300 tokens > E + E*r: the automatic relayout is on when a backward pass can follow, off under no_grad.
        const int inF = 32, outF = 24, E = 6, k = 2, r = 4;
        torch.manual_seed(5);
        var (baseLayer, layer) = RandomLayer(2, "o_proj", inF, outF, E, k, r, 0.0);
        var x = torch.randn(3, 100, inF);
        Tensor want;
        using (torch.no_grad()) want = Naive(x, baseLayer.weight, layer.router, layer.lora_A, layer.lora_B, E, k, r, 16.0 / r);
        using var mode = torch.set_grad_enabled(gradEnabled);
        var y = layer.Forward(x, baseLayer);
        Assert.True(TestUtil.RelDiff(y, want) < 1e-5);
        Assert.Equal(gradEnabled, y.requires_grad);
    }

    [Fact]
    public void HalfPrecisionBaseAddsTheFloat32AdapterInTheBaseDtype()
    {
        const int inF = 32, outF = 16, E = 4, k = 2, r = 4;
        torch.manual_seed(8);
        var (baseLayer, layer) = RandomLayer(0, "q_proj", inF, outF, E, k, r, 0.0, ScalarType.BFloat16);
        layer.Precision = AdapterPrecision.Float32;   // mixed precision: MixedPrecisionTests
        var x = torch.randn(2, 50, inF).to(ScalarType.BFloat16);
        foreach (bool relayout in new[] { false, true })
        {
            layer.Relayout = relayout;
            var y = layer.Forward(x, baseLayer);
            Assert.Equal(ScalarType.BFloat16, y.dtype);
            var delta = Naive(x.to(ScalarType.Float32), torch.zeros(outF, inF), layer.router, layer.lora_A, layer.lora_B, E, k, r, 16.0 / r);
            var want = baseLayer.Base(x) + delta.to(ScalarType.BFloat16);
            Assert.True(TestUtil.MaxAbsDiff(y, want) < 0.05, $"relayout {relayout}: {TestUtil.MaxAbsDiff(y, want)}");
        }
    }

    /// <summary>One token without autograd takes the C# path (routing and the chosen experts in one pass): it equals the
    /// naive formula, in float32 to float32 rounding, over a bfloat16 base as the batched path adds the adapter (the
    /// update rounded to bfloat16, then added); r 8 takes its vector branch, r 3 the scalar one; 1000 inputs leave a tail.</summary>
    [Theory]
    [InlineData(8, false)]
    [InlineData(3, false)]
    [InlineData(8, true)]
    [InlineData(3, true)]
    public void OneTokenWithoutAutogradMatchesTheNaiveFormula(int r, bool bf16)
    {
        const int inF = 1000, outF = 37, E = 6, k = 2;
        torch.manual_seed(11 + r);
        var dtype = bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var (baseLayer, layer) = RandomLayer(3, "down_proj", inF, outF, E, k, r, 0.05, dtype);
        layer.eval();
        Tensor? sunk = null;
        layer.RouterLogitsSink = (_, logits) => sunk = logits.alias().DetachFromDisposeScope();   // as AdapterModel collects them
        using var _ = torch.no_grad();
        for (int t = 0; t < 5; t++)
        {
            var x = torch.randn(1, 1, inF).to(dtype);
            var y = layer.Forward(x, baseLayer);
            Assert.True(TestUtil.RelDiff(sunk!, x.to(ScalarType.Float32).reshape(1, inF).matmul(layer.router.t())) < 1e-5, "router logits");
            Assert.Equal(dtype, y.dtype);
            Assert.Equal(new long[] { 1, 1, outF }, y.shape);
            var delta = Naive(x.to(ScalarType.Float32), torch.zeros(outF, inF), layer.router, layer.lora_A, layer.lora_B, E, k, r, 16.0 / r);
            if (bf16)
            {
                var want = baseLayer.Base(x) + delta.to(ScalarType.BFloat16);
                // the update and the sum each rounded once to bfloat16: within two of its units in the last place
                var tolerance = want.to(ScalarType.Float32).abs() * Math.Pow(2, -7) + 1e-6;
                Assert.True((y.to(ScalarType.Float32) - want.to(ScalarType.Float32)).abs().le(tolerance).all().item<bool>(), $"token {t}: {TestUtil.MaxAbsDiff(y, want)}");
            }
            else Assert.True(TestUtil.RelDiff(y, Naive(x, baseLayer.weight, layer.router, layer.lora_A, layer.lora_B, E, k, r, 16.0 / r)) < 1e-5, $"token {t}");
        }
    }

    [Fact]
    public void HalfPrecisionBaseScaleInTheGateEqualsTheScaledProductBitForBit()
    {
        // Below float32 the scale multiplies the [N, E] gate instead of the [N, out] adapter output. With alpha / r a
        // power of two (16 / 4 here) the two are the same float32 arithmetic: the old formulation, written out here,
        // gives the very same output and gradients.
        const int inF = 32, outF = 16, E = 4, k = 2, r = 4;
        torch.manual_seed(9);
        var (baseLayer, layer) = RandomLayer(0, "q_proj", inF, outF, E, k, r, 0.0, ScalarType.BFloat16);
        layer.Relayout = true;
        layer.Precision = AdapterPrecision.Float32;   // the float32 formulation (mixed precision: MixedPrecisionTests)
        var x0 = torch.randn(2, 50, inF).to(ScalarType.BFloat16);
        var upstream = torch.randn(2, 50, outF).to(ScalarType.BFloat16);
        Tensor[] Run(Func<Tensor, Tensor> forward)
        {
            layer.zero_grad();
            var x = x0.detach().requires_grad_(true);
            forward(x).backward([upstream]);
            return [.. new[] { x.grad!, layer.router.grad!, layer.lora_A.grad!, layer.lora_B.grad! }.Select(g => g.clone())];
        }
        Tensor Old(Tensor x)
        {
            var xf = x.reshape(-1, inF).to(ScalarType.Float32);
            var both = xf.mm(torch.cat([layer.router, layer.lora_A], 0).t());
            var (topL, topI) = both.narrow(1, 0, E).contiguous().topk(k, dim: 1);
            var gate = torch.zeros(xf.shape[0], E).scatter(1, topI, torch.nn.functional.softmax(topL, 1));
            var h = (both.narrow(1, E, E * r).view(-1, E, r) * gate.unsqueeze(-1)).view(-1, E * r);
            var y = baseLayer.Base(x.reshape(-1, inF));
            y.add_(h.mm(layer.lora_B.t().contiguous()).mul_(16.0 / r).to(y.dtype));
            return y.view(2, 50, outF);
        }
        var yNew = layer.Forward(x0, baseLayer);
        Assert.True(yNew.eq(Old(x0)).all().item<bool>());
        var gNew = Run(x => layer.Forward(x, baseLayer));
        var gOld = Run(Old);
        for (int i = 0; i < gNew.Length; i++)
            Assert.True(gNew[i].eq(gOld[i]).all().item<bool>(), $"gradient {i} differs by {TestUtil.MaxAbsDiff(gNew[i], gOld[i])}");
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

    /// <summary>q, k and v around one input route as one (<see cref="MolaSiblings"/>): each output and every gradient
    /// equals the naive formula per module, with the balance loss over the three modules' logits, computed in a
    /// separate graph from cloned parameters. The group computes all three on q's call (the sink then holds three).</summary>
    [Fact]
    public void SiblingsRouteAsOneAndMatchTheFormula()
    {
        const int inF = 24, E = 4, k = 2, r = 3;
        int[] outs = [20, 8, 8];
        string[] names = ["q_proj", "k_proj", "v_proj"];
        torch.manual_seed(21);
        var layers = outs.Select((o, i) => RandomLayer(3, names[i], inF, o, E, k, r, 0.0)).ToArray();
        var siblings = new MolaSiblings([.. layers.Select(l => l.Layer)]);
        var logits = new List<Tensor>();
        foreach (var (_, layer) in layers)
        {
            layer.Siblings = siblings;
            layer.RouterLogitsSink = (_, l) => logits.Add(l.alias().DetachFromDisposeScope());
        }
        var x = torch.randn(2, 30, inF);                     // 60 tokens > E + E*r: the training layout
        var ups = outs.Select(o => torch.randn(2, 30, o)).ToArray();

        var xi = x.clone().requires_grad_(true);
        var ys = new Tensor[3];
        for (int i = 0; i < 3; i++)
        {
            ys[i] = layers[i].Layer.Forward(xi, layers[i].Base);
            if (i == 0) Assert.Equal(3, logits.Count);   // routed for all three on the first call
        }
        var loss = LoadBalancing.LayerLoss(torch.cat(logits, 0), E, k);
        for (int i = 0; i < 3; i++) loss = loss + (ys[i] * ups[i]).sum();
        loss.backward();

        var xr = x.clone().requires_grad_(true);
        var clones = layers.Select(l => (R: l.Layer.router.detach().clone().requires_grad_(true), A: l.Layer.lora_A.detach().clone().requires_grad_(true),
            B: l.Layer.lora_B.detach().clone().requires_grad_(true))).ToArray();
        var xf = xr.reshape(-1, inF);
        var want = torch.cat(clones.Select(c => xf.matmul(c.R.t())).ToArray(), 0);
        var wantLoss = LoadBalancing.LayerLoss(want, E, k);
        var wantYs = new Tensor[3];
        for (int i = 0; i < 3; i++)
        {
            wantYs[i] = Naive(xr, layers[i].Base.weight, clones[i].R, clones[i].A, clones[i].B, E, k, r, 16.0 / r);
            wantLoss = wantLoss + (wantYs[i] * ups[i]).sum();
        }
        wantLoss.backward();

        AssertClose(torch.cat(logits, 0), want, 1e-5, "router logits");
        AssertClose(xi.grad!, xr.grad!, 1e-5, "grad x");
        for (int i = 0; i < 3; i++)
        {
            AssertClose(ys[i], wantYs[i], 1e-5, $"{names[i]} y");
            AssertClose(layers[i].Layer.router.grad!, clones[i].R.grad!, 1e-5, $"{names[i]} grad router");
            AssertClose(layers[i].Layer.lora_A.grad!, clones[i].A.grad!, 1e-5, $"{names[i]} grad A");
            AssertClose(layers[i].Layer.lora_B.grad!, clones[i].B.grad!, 1e-5, $"{names[i]} grad B");
        }
    }

    /// <summary>Over a bfloat16 base (mixed precision) the group computes what each member computes alone: the same
    /// products and roundings, so outputs and gradients agree to within a bfloat16 unit of the largest value.</summary>
    [Fact]
    public void SiblingsOverABfloat16BaseEqualEachLayerAlone()
    {
        const int inF = 32, E = 6, k = 2, r = 4;
        int[] outs = [40, 40];
        torch.manual_seed(22);
        var layers = outs.Select((o, i) => RandomLayer(5, i == 0 ? "gate_proj" : "up_proj", inF, o, E, k, r, 0.0, ScalarType.BFloat16)).ToArray();
        var siblings = new MolaSiblings([.. layers.Select(l => l.Layer)]);
        var x = torch.randn(64, inF).to(ScalarType.BFloat16);

        Tensor[] Run(bool grouped)
        {
            foreach (var (_, layer) in layers)
            {
                layer.Siblings = grouped ? siblings : null;
                layer.zero_grad();
            }
            var xi = x.clone().requires_grad_(true);
            var ys = layers.Select(l => l.Layer.Forward(xi, l.Base)).ToArray();
            ys.Aggregate((Tensor)torch.zeros(1), (sum, y) => sum + y.to(ScalarType.Float32).pow(2).sum()).backward();
            return [.. ys.Select(y => y.detach()), xi.grad!, .. layers.SelectMany(l => new[] { l.Layer.router.grad!.clone(), l.Layer.lora_A.grad!.clone(), l.Layer.lora_B.grad!.clone() })];
        }

        var alone = Run(false);
        var grouped = Run(true);
        for (int i = 0; i < alone.Length; i++) AssertClose(grouped[i], alone[i], 1.0 / 128, $"tensor {i}");
    }

    /// <summary>With dropout on, the group multiplies the routers' product once and each member's experts read its own
    /// dropout(x), the masks drawn in the members' order: reseeded, it computes what the members compute alone.</summary>
    [Fact]
    public void SiblingsWithDropoutEqualEachLayerAloneWithTheSameMasks()
    {
        const int inF = 24, E = 4, k = 2, r = 3;
        int[] outs = [20, 8, 8];
        torch.manual_seed(23);
        var layers = outs.Select((o, i) => RandomLayer(1, "q_proj", inF, o, E, k, r, 0.3)).ToArray();
        var siblings = new MolaSiblings([.. layers.Select(l => l.Layer)]);
        var x = torch.randn(50, inF);

        Tensor[] Run(bool grouped)
        {
            int sunk = 0;
            foreach (var (_, layer) in layers)
            {
                layer.Siblings = grouped ? siblings : null;
                layer.RouterLogitsSink = (_, _) => sunk++;
                layer.train();
                layer.zero_grad();
            }
            var xi = x.clone().requires_grad_(true);
            torch.manual_seed(77);
            var ys = new Tensor[layers.Length];
            for (int i = 0; i < layers.Length; i++)
            {
                ys[i] = layers[i].Layer.Forward(xi, layers[i].Base);
                if (i == 0) Assert.Equal(grouped ? 3 : 1, sunk);
            }
            ys.Aggregate((Tensor)torch.zeros(1), (sum, y) => sum + y.pow(2).sum()).backward();
            return [.. ys.Select(y => y.detach()), xi.grad!, .. layers.SelectMany(l => new[] { l.Layer.router.grad!.clone(), l.Layer.lora_A.grad!.clone(), l.Layer.lora_B.grad!.clone() })];
        }

        var alone = Run(false);
        var grouped = Run(true);
        for (int i = 0; i < alone.Length; i++) AssertClose(grouped[i], alone[i], 1e-5, $"tensor {i}");
    }

    [Fact]
    public void AttachGroupsTheModulesThatReadOneInput()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var config = new AdapterConfig { Kind = AdapterKind.Mola, TargetModules = [.. TargetModules.All], Rank = [4, 4, 4], NumExperts = [2, 4, 6], TopK = [1, 2, 2] };
        var adapter = AdapterModel.Attach(model, config);
        foreach (var (l, m, _, a) in adapter.Modules)
        {
            var siblings = ((MolaLayer)a).Siblings;
            string[] want = m is "q_proj" or "k_proj" or "v_proj" ? ["q_proj", "k_proj", "v_proj"] : m is "gate_proj" or "up_proj" ? ["gate_proj", "up_proj"] : [];
            Assert.Equal(want, siblings?.Members.Select(s => s.Module).ToArray() ?? []);
            Assert.All(siblings?.Members ?? [], s => Assert.Equal(l, s.Layer));
        }
    }
}
