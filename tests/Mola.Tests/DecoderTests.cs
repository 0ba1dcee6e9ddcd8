using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class DecoderTests
{
    [Fact]
    public void NativeLibraryLoads()
    {
        // The build patches TorchSharp's native shim where the system libstdc++ is too old;
        // this fails with TypeInitializationException if that did not work.
        using var a = torch.ones(3, 3);
        using var b = a.matmul(a);
        Assert.Equal(9.0f, b.sum().item<float>() / 3);
    }

    [Theory]
    [InlineData("llama-tiny")]   // sharded, F32
    [InlineData("mistral-tiny")] // BF16, grouped-query, sliding window 5 over 12 positions
    [InlineData("gemma-tiny")]   // BF16, head_dim 32 with hidden 64, tied head, (1 + w) norm
    public void LogitsAndLossMatchReference(string name)
    {
        var expected = TestUtil.ReadAll(TestUtil.Fixture(name, "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture(name), ScalarType.Float32);
        using var _ = torch.no_grad();
        var ids = expected["input_ids"];
        using var logits = model.Forward(ids);
        Assert.True(TestUtil.MaxAbsDiff(logits, expected["logits"]) < 1e-4, $"max |diff| {TestUtil.MaxAbsDiff(logits, expected["logits"])}");
        using var loss = Losses.CausalLm(logits, ids);
        double want = expected["loss"].item<float>();
        Assert.True(Math.Abs(loss.item<float>() - want) / want < 1e-5, $"loss {loss.item<float>()} vs {want}");
    }

    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("mistral-tiny")]
    [InlineData("gemma-tiny")]
    public void LeftAndRightPaddingGiveTheLogitsOfTheUnpaddedSequence(string name)
    {
        var expected = TestUtil.ReadAll(TestUtil.Fixture(name, "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture(name), ScalarType.Float32);
        using var _ = torch.no_grad();
        var ids = expected["input_ids"][0..1, ..];                 // [1, 12]
        var want = expected["logits"][0..1, ..];
        const int pad = 3;
        var pads = torch.zeros(1, pad, ScalarType.Int64);
        var ones = torch.ones(1, 12, ScalarType.Int64);
        var left = model.Forward(torch.cat([pads, ids], 1), torch.cat([pads, ones], 1));
        var right = model.Forward(torch.cat([ids, pads], 1), torch.cat([ones, pads], 1));
        Assert.True(TestUtil.MaxAbsDiff(left[.., pad.., ..], want) < 1e-4);
        Assert.True(TestUtil.MaxAbsDiff(right[.., ..12, ..], want) < 1e-4);
        Assert.False(left.isnan().any().item<bool>());
    }

    [Fact]
    public void BFloat16ModelStaysCloseToReference()
    {
        var expected = TestUtil.ReadAll(TestUtil.Fixture("mistral-tiny", "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture("mistral-tiny"), ScalarType.BFloat16);
        using var _ = torch.no_grad();
        using var logits = model.Forward(expected["input_ids"]);
        Assert.Equal(ScalarType.BFloat16, logits.dtype);
        Assert.True(TestUtil.MaxAbsDiff(logits, expected["logits"]) < 0.1);
    }

    /// <summary>bfloat16 decoding one token at a time through the KV cache, where every product is <see cref="Bf16Gemv"/>'s:
    /// each position's logits stay as close to the float64 reference as the whole bfloat16 forward pass must.</summary>
    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("mistral-tiny")]
    public void BFloat16CachedDecodingStaysCloseToReference(string name)
    {
        var expected = TestUtil.ReadAll(TestUtil.Fixture(name, "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture(name), ScalarType.BFloat16);
        using var _ = torch.no_grad();
        var ids = expected["input_ids"][0..1, ..];
        var want = expected["logits"][0..1, ..];
        using var cache = new KvCache(model.Config.NumHiddenLayers);
        for (long t = 0; t < ids.shape[1]; t++)
        {
            using var step = model.Forward(ids[.., (int)t..(int)(t + 1)], null, cache);
            double diff = TestUtil.MaxAbsDiff(step, want[.., (int)t..(int)(t + 1), ..]);
            Assert.True(diff < 0.1, $"position {t}: max |diff| {diff}");
        }
    }
}
