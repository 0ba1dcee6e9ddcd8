using Mola.Adapters;
using Mola.Generation;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class GenerationTests
{
    /// <summary>Independent greedy decoding: the full sequence is re-run for every new token and the
    /// last position's argmax taken (no cache, no padding, one prompt at a time).</summary>
    static List<int> NaiveGreedy(CausalLM model, List<int> prompt, int newTokens, int eos)
    {
        using var _ = torch.no_grad();
        var seq = new List<int>(prompt);
        var outIds = new List<int>();
        for (int i = 0; i < newTokens; i++)
        {
            using var ids = torch.tensor(seq.Select(x => (long)x).ToArray(), [1, seq.Count]);
            using var logits = model.Forward(ids);
            int next = (int)logits[0, -1].argmax().item<long>();
            if (next == eos) break;
            seq.Add(next);
            outIds.Add(next);
        }
        return outIds;
    }

    static readonly List<int>[] Prompts = [[1, 325, 260, 354], [1, 287, 354, 276, 348, 310, 261, 268], [1, 300]];

    [Theory]
    [InlineData("llama-tiny", false)]
    [InlineData("llama-tiny", true)]
    [InlineData("mistral-tiny", false)]   // sliding window 5: generation runs past the window
    [InlineData("gemma-tiny", false)]
    public void CachedBatchedGreedyEqualsFullSequenceArgmax(string name, bool withAdapter)
    {
        using var model = ModelLoader.Load(TestUtil.Fixture(name));
        if (withAdapter) AdapterModel.Load(model, TestUtil.Fixture("llama-tiny-mola")).eval();
        const int newTokens = 12;
        var options = new GenerationOptions { MaxNewTokens = newTokens, Greedy = true };
        // eos -1: never stop early, so every row runs the full length
        var batched = TextGenerator.Generate(model, Prompts, options, eosId: -1);
        var uncached = TextGenerator.Generate(model, Prompts, options with { NoCache = true }, eosId: -1);
        for (int i = 0; i < Prompts.Length; i++)
        {
            var want = NaiveGreedy(model, Prompts[i], newTokens, eos: -1);
            Assert.Equal(newTokens, want.Count);
            Assert.Equal(want, batched[i]);
            Assert.Equal(want, uncached[i]);
        }
    }

    /// <summary>One prompt, so no padding: the decoding steps take the attention without a mask (grouped key heads
    /// read in place for gemma-tiny's 4 query heads over 1 key head) and the cache grows in place (4 positions, then
    /// 8, then 16), and still give the full sequence's argmax at every step.</summary>
    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("gemma-tiny")]
    [InlineData("mistral-tiny")]   // 2 key heads for 4 query heads; past the window of 5 the mask returns
    [InlineData("llama-tiny", true)]   // MoLA: each new token routed on its own (the one-token path), the prompt batched
    public void CachedSinglePromptEqualsFullSequenceArgmax(string name, bool withAdapter = false)
    {
        using var model = ModelLoader.Load(TestUtil.Fixture(name));
        if (withAdapter) AdapterModel.Load(model, TestUtil.Fixture("llama-tiny-mola")).eval();
        const int newTokens = 14;
        var cached = TextGenerator.Generate(model, [Prompts[0]], new GenerationOptions { MaxNewTokens = newTokens }, eosId: -1)[0];
        Assert.Equal(NaiveGreedy(model, Prompts[0], newTokens, eos: -1), cached);
    }

    [Fact]
    public void StopsAtEosAndMaxNewTokens()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var free = TextGenerator.Generate(model, [Prompts[0]], new GenerationOptions { MaxNewTokens = 6 }, eosId: -1)[0];
        Assert.Equal(6, free.Count);
        // Declare the third generated token to be EOS: generation must stop before it.
        int eos = free[2];
        int firstEos = free.IndexOf(eos);
        var stopped = TextGenerator.Generate(model, [Prompts[0]], new GenerationOptions { MaxNewTokens = 6 }, eosId: eos)[0];
        Assert.Equal(free.Take(firstEos), stopped);
    }

    [Fact]
    public void SamplingIsReproducibleForASeedAndRespectsTopK()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var o = new GenerationOptions { MaxNewTokens = 10, Greedy = false, Temperature = 1.5, Seed = 7 };
        var a = TextGenerator.Generate(model, Prompts, o, eosId: -1);
        var b = TextGenerator.Generate(model, Prompts, o, eosId: -1);
        Assert.Equal(a, b);
        // top-k 1 is greedy whatever the temperature
        var k1 = TextGenerator.Generate(model, Prompts, o with { TopK = 1 }, eosId: -1);
        var greedy = TextGenerator.Generate(model, Prompts, new GenerationOptions { MaxNewTokens = 10 }, eosId: -1);
        Assert.Equal(greedy, k1);
        // a tiny nucleus keeps only the most likely token: greedy again
        var p = TextGenerator.Generate(model, Prompts, o with { TopP = 1e-6 }, eosId: -1);
        Assert.Equal(greedy, p);
    }
}
