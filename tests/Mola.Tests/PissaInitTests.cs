using Mola.Adapters;
using Mola.Models;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class PissaInitTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    static AdapterConfig Config() =>
        (AdapterSpec.Paper with { Experts = "2,4,8", TopK = "1,2,2", Rank = "4", Dropout = 0 }).Build(3, Llama);

    /// <summary>The model's logits, through the adapter when one is given (the base model's own forward pass otherwise).</summary>
    static Tensor Logits(CausalLM model, Tensor ids, AdapterModel? adapter = null)
    {
        using var _ = no_grad();
        if (adapter is null) return model.Forward(ids).detach();
        using var o = adapter.Forward(ids);
        return o.Logits.detach().clone();
    }

    /// <summary>Every expert equals the top-r part of W and the base holds the rest, and the router's weights sum to 1:
    /// the initial model's logits are the base model's (llama-tiny fixture, float32), whatever the routing; the
    /// residual rebuilt from the stored factors on a fresh load of the unchanged checkpoint gives the same model.</summary>
    [Fact]
    public void InitialLogitsEqualTheBaseModels_AndTheStoredFactorsRebuildTheModel()
    {
        var ids = randint(3, 400, [2, 20], generator: new Generator().manual_seed(5));
        using var model = ModelLoader.Load(Llama);
        using var reference = Logits(model, ids);

        manual_seed(1);
        var adapter = AdapterModel.Attach(model, Config());
        var factors = PissaInit.Apply(adapter);
        Assert.Equal(2 * 7 * 3, factors.Count);
        using var initial = Logits(model, ids, adapter);
        Assert.True(TestUtil.RelDiff(initial, reference) <= 1e-5, $"relative diff {TestUtil.RelDiff(initial, reference)}");
        // The base really changed (the residual), and the experts carry the rest: not a no-op passing by accident.
        using var q0 = ModelLoader.Load(Llama);
        var w = q0.named_parameters().Single(p => p.name == "model.layers.0.self_attn.q_proj.weight").parameter;
        var residual = model.named_parameters().Single(p => p.name == "model.layers.0.self_attn.q_proj.weight").parameter;
        Assert.True(TestUtil.MaxAbsDiff(w, residual) > 1e-3);

        // A second load of the unchanged checkpoint, the adapter's tensors and the stored factors: the same logits.
        string dir = TestUtil.TempDir();
        adapter.Save(dir);
        using var fresh = ModelLoader.Load(Llama);
        var again = AdapterModel.Load(fresh, dir);
        PissaInit.ApplyResidual(again, factors, dir);
        using var reloaded = Logits(fresh, ids, again);
        Assert.True(TestUtil.MaxAbsDiff(reloaded, initial) <= 1e-6, $"max diff {TestUtil.MaxAbsDiff(reloaded, initial)}");
    }

    [Fact]
    public void TrainingFromPissa_GivesFiniteNonzeroExpertGradients()
    {
        using var model = ModelLoader.Load(Llama);
        manual_seed(2);
        var adapter = AdapterModel.Attach(model, Config());
        PissaInit.Apply(adapter);
        var ids = randint(3, 400, [2, 16], generator: new Generator().manual_seed(6));
        using var o = adapter.Forward(ids, labels: ids);
        o.Loss!.backward();
        foreach (var p in adapter.parameters())
        {
            Assert.NotNull(p.grad);
            Assert.True(isfinite(p.grad!).all().item<bool>());
        }
        Assert.Contains(adapter.parameters(), p => p.grad!.abs().max().item<float>() > 0);
    }
}
