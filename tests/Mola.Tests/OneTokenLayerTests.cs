using Mola.Adapters;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>Batch-1 decoding's one-pass decoder layer (C#, bfloat16) against the layer's libtorch operations on the
/// same model and cache, and one layer against the formula written out in float64 here.</summary>
public class OneTokenLayerTests
{
    /// <summary>A random bfloat16 LLaMA (hidden 256) whose heads take the one-pass layer (by default head size 32,
    /// grouped-query: 4 query heads a key head), with weights scaled as trained ones are (rows of norm ~1), so
    /// activations stay of order 1.</summary>
    static CausalLM RandomModel(int seed, int layers = 2, int heads = 8, int kvHeads = 2)
    {
        var config = new ModelShapes("llama", 400, 256, 688, layers, heads, kvHeads, 512, null).Config();
        var model = new CausalLM(config, ScalarType.BFloat16, CPU);
        torch.manual_seed(seed);
        using var _ = no_grad();
        foreach (var (name, p) in model.named_parameters())
        {
            using var init = p.dim() == 1 ? 1 + 0.2 * randn(p.shape) : randn(p.shape) / Math.Sqrt(p.shape[1]);
            p.copy_(name.Contains("embed") ? randn(p.shape) : init);
        }
        return model;
    }

    static AdapterModel AttachMola(CausalLM model)
    {
        var config = new AdapterConfig
        {
            Kind = AdapterKind.Mola,
            TargetModules = [.. TargetModules.All],
            Rank = [8, 8],
            NumExperts = [4, 6],
            TopK = [2, 2],
            LoraAlpha = 16,
            LoraDropout = 0.05,   // off in eval mode, as in generation
        };
        var adapter = AdapterModel.Attach(model, config);
        adapter.eval();
        using var _ = no_grad();
        foreach (var (name, p) in adapter.named_parameters())
            if (name.EndsWith("lora_B")) p.copy_(randn(p.shape) * 0.05);
        return adapter;
    }

    static void UseOneTokenPath(CausalLM model, bool on)
    {
        foreach (var layer in model.Layers) layer.OneTokenPath = on;
    }

    [Theory]
    [InlineData(false, 8, 2)]
    [InlineData(true, 8, 2)]    // a MoLA adapter on every map, B not zero so that it changes the logits
    [InlineData(false, 2, 2)]   // LLaMA-2-7B's head size (128), one query head a key head
    public void DecodesAsTheLibtorchLayerDoes(bool withMola, int heads, int kvHeads)
    {
        using var model = RandomModel(3, heads: heads, kvHeads: kvHeads);
        using var adapter = withMola ? AttachMola(model) : null;
        using var _ = no_grad();
        using var fastCache = new KvCache(2);
        using var slowCache = new KvCache(2);
        var prompt = randint(400, [1, 20], dtype: ScalarType.Int64);
        UseOneTokenPath(model, false);
        var slow = model.Forward(prompt, null, slowCache);
        var fast = model.Forward(prompt, null, fastCache);   // a prompt of 20 tokens is not one token: libtorch either way
        Assert.True(slow.eq(fast).all().item<bool>());
        long token = slow[0, -1].argmax().item<long>();
        int agree = 0, farther = 0, steps = 45;   // the caches grow from 20 positions to 40 and 80 on the way
        for (int step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            var input = tensor(new[] { token }, [1, 1]);
            UseOneTokenPath(model, false);
            slow = model.Forward(input, null, slowCache);
            UseOneTokenPath(model, true);
            Assert.True(OneTokenLayer.Applies(model.Layers[0], model.Embed(input), model.Context(input, null, fastCache)));
            fast = model.Forward(input, null, fastCache);
            Assert.Equal(slow.shape, fast.shape);
            // bfloat16 roundings apart (attention's weights and a norm's sums are rounded differently): logits of
            // order 3 within 2^-6 of their largest, a few bfloat16 steps (measured: 0.016-0.031, one or two steps).
            // With MoLA a router that nearly ties two experts can choose another one on inputs a rounding apart
            // (measured: 2 of 45 steps at 0.125, the steps after back at 0.02): a few steps may be 2^-3 apart.
            double diff = TestUtil.MaxAbsDiff(slow, fast), scale = slow.abs().max().to(ScalarType.Float32).item<float>();
            Assert.True(diff <= scale / 8, $"step {step}: largest difference {diff} of logits up to {scale}");
            if (diff > scale / 64) farther++;
            long slowToken = slow[0, 0].argmax().item<long>();
            if (fast[0, 0].argmax().item<long>() == slowToken) agree++;
            token = slowToken;
        }
        Assert.True(agree >= steps - 2, $"the same next token at {agree} of {steps} steps");
        Assert.True(farther <= (withMola ? 3 : 0), $"{farther} of {steps} steps more than 2^-6 apart");
        Assert.Equal(slowCache.Length, fastCache.Length);
    }

    [Fact]
    public void OtherCallsTakeTheLibtorchLayer()
    {
        using var model = RandomModel(5, layers: 1);
        using var cache = new KvCache(1);
        var layer = model.Layers[0];
        var one = tensor(new long[] { 7 }, [1, 1]);
        bool Takes(Tensor ids, KvCache? kv = null) => OneTokenLayer.Applies(layer, model.Embed(ids), model.Context(ids, null, kv));
        using (no_grad())
        {
            model.Forward(randint(400, [1, 4], dtype: ScalarType.Int64), null, cache).Dispose();
            Assert.True(Takes(one, cache));
            Assert.False(Takes(one));                                                       // no cache
            Assert.False(Takes(randint(400, [1, 3], dtype: ScalarType.Int64), cache));       // a prompt
            Assert.False(Takes(randint(400, [2, 1], dtype: ScalarType.Int64), cache));       // a batch
            var mask = tensor(new long[] { 0, 1, 1, 1, 1 }, [1, 5]);                         // padding: a mask to apply
            Assert.False(OneTokenLayer.Applies(layer, model.Embed(one), model.Context(one, mask, cache)));
            layer.self_attn.v_proj.Adapter = new NoAdapter();
            Assert.False(Takes(one, cache));                                                // an adapter on one map
            layer.self_attn.v_proj.Adapter = null;
        }
        Assert.False(Takes(one, cache));                                                    // autograd on
    }

    sealed class NoAdapter : ILinearAdapter
    {
        public Tensor Forward(Tensor x, Linear baseLayer) => baseLayer.Base(x);
    }
}
