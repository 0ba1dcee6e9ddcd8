using Mola.Adapters;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>The serving engine against <see cref="TextGenerator.Generate"/> on a model with one adapter loaded the
/// usual way: rows that join a running batch at different times, with different adapters, give each the tokens they
/// give alone.</summary>
public class BatchEngineTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");
    static readonly string Mola = TestUtil.Fixture("llama-tiny-mola");

    /// <summary>A LoRA adapter with random (nonzero) B on llama-tiny's q and v maps, saved as a directory.</summary>
    internal static string RandomLora()
    {
        using var model = ModelLoader.Load(Llama);
        var config = new AdapterConfig { Kind = AdapterKind.Lora, TargetModules = ["q_proj", "v_proj"], Rank = [4, 4, 4], LoraAlpha = 8, LoraDropout = 0 };
        using var adapter = AdapterModel.Attach(model, config);
        torch.manual_seed(7);
        using (torch.no_grad())
            foreach (var (_, _, _, m) in adapter.Modules) nn.init.normal_(((LoraLayer)m).lora_B, 0, 0.5);
        string dir = TestUtil.TempDir();
        adapter.Save(dir);
        return dir;
    }

    static List<int> Alone(string? adapterDir, List<int> prompt, GenerationOptions options, int eos)
    {
        using var model = ModelLoader.Load(Llama);
        if (adapterDir is not null) AdapterModel.Load(model, adapterDir).eval();   // unmerged, as the server applies it
        return TextGenerator.Generate(model, [prompt], options, eos)[0];
    }

    [Fact]
    public async Task RowsJoiningARunningBatchWithTheirOwnAdaptersGetTheirAloneTokens()
    {
        string lora = RandomLora();
        using var model = ModelLoader.Load(Llama);
        var tok = MolaTokenizer.Load(Llama);
        using var set = new AdapterSet(model, [("mola", Mola), ("lora", lora)]);
        using var engine = new BatchEngine(model, tok, set, "llama-tiny", maxBatch: 4);
        string[] texts = ["the cell energy", "a river", "north of the stone the water is cold and", "x", "the plant grows in the light of", "cold"];
        int[] adapters = [0, -1, 1, 0, 1, -1];
        var greedy = new GenerationOptions { MaxNewTokens = 20 };
        var sampled = new GenerationOptions { MaxNewTokens = 20, Greedy = false, Temperature = 0.9, TopP = 0.95, Seed = 5 };
        // Two sampled rows too: each has its own generator, so its draws are those of a run alone with its seed.
        var options = new[] { greedy, greedy, greedy, sampled, greedy, sampled };
        var jobs = new List<EngineJob>();
        for (int i = 0; i < texts.Length; i++)
        {
            var job = engine.Submit(new EngineRequest { PromptIds = tok.Encode(texts[i], bos: true), Adapter = adapters[i], Options = options[i] });
            jobs.Add(job);
            // Later rows join while earlier ones decode (and, past 4, wait for a slot).
            if (i % 2 == 0) await job.Deltas.WaitToReadAsync();
        }
        var results = await Task.WhenAll(jobs.Select(j => j.Result));
        string?[] dirs = [Mola, lora];
        for (int i = 0; i < texts.Length; i++)
        {
            var want = Alone(adapters[i] < 0 ? null : dirs[adapters[i]], tok.Encode(texts[i], bos: true), options[i], tok.EosId);
            Assert.True(want.Count > 0);
            Assert.Equal(want, results[i].Tokens);
            Assert.Equal(tok.Decode(want), results[i].Text);
            Assert.Equal(want.Count == 20 ? "length" : "stop", results[i].FinishReason);
        }
        // The adapters change the output (else the test would prove nothing about per-row switching).
        var prompt = tok.Encode(texts[0], bos: true);
        Assert.NotEqual(Alone(null, prompt, greedy, tok.EosId), Alone(Mola, prompt, greedy, tok.EosId));
        Assert.NotEqual(Alone(null, prompt, greedy, tok.EosId), Alone(lora, prompt, greedy, tok.EosId));
    }

    [Theory]
    [InlineData("mistral-tiny")]   // sliding window 5: the window counts slots, which left padding must keep right
    [InlineData("gemma-tiny")]
    public async Task OtherArchitecturesBatchAsTheyDecodeAlone(string name)
    {
        string dir = TestUtil.Fixture(name);
        using var model = ModelLoader.Load(dir);
        var tok = MolaTokenizer.Load(Llama);   // these fixtures have none; the engine needs one for EOS and the text
        using var engine = new BatchEngine(model, tok, null);
        List<int>[] prompts = [[1, 325, 260, 354], [1, 287, 354, 276, 348, 310, 261, 268], [1, 300]];
        var options = new GenerationOptions { MaxNewTokens = 12 };
        var jobs = new List<EngineJob>();
        foreach (var p in prompts)
        {
            jobs.Add(engine.Submit(new EngineRequest { PromptIds = p, Options = options }));
            await jobs[^1].Deltas.WaitToReadAsync();
        }
        for (int i = 0; i < prompts.Length; i++)
        {
            using var alone = ModelLoader.Load(dir);
            Assert.Equal(TextGenerator.Generate(alone, [prompts[i]], options, tok.EosId)[0], (await jobs[i].Result).Tokens);
        }
    }

    [Fact]
    public async Task StopStringsCutTheTextAndCancellationEndsARequest()
    {
        using var model = ModelLoader.Load(Llama);
        var tok = MolaTokenizer.Load(Llama);
        using var engine = new BatchEngine(model, tok, null);
        var prompt = tok.Encode("the cell energy", bos: true);
        var options = new GenerationOptions { MaxNewTokens = 20 };
        string full = tok.Decode(Alone(null, prompt, options, tok.EosId));
        string stop = full.Substring(full.Length / 2, 2);
        var cut = await engine.Submit(new EngineRequest { PromptIds = prompt, Options = options, Stop = [stop] }).Result;
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], cut.Text);
        Assert.Equal("stop", cut.FinishReason);
        // The streamed pieces add up to the same text.
        var job = engine.Submit(new EngineRequest { PromptIds = prompt, Options = options, Stop = [stop] });
        var pieces = new List<string>();
        await foreach (var d in job.Deltas.ReadAllAsync()) pieces.Add(d);
        Assert.Equal(cut.Text, string.Concat(pieces));

        using var cts = new CancellationTokenSource();
        var cancelled = engine.Submit(new EngineRequest { PromptIds = prompt, Options = new GenerationOptions { MaxNewTokens = 100 }, Cancellation = cts.Token });
        await cancelled.Deltas.WaitToReadAsync();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.Result);
        // The engine goes on.
        Assert.Equal(cut.Text, (await engine.Submit(new EngineRequest { PromptIds = prompt, Options = options, Stop = [stop] }).Result).Text);
    }

    [Fact]
    public async Task TextHeldBackForAStopStringGoesOutAtEos()
    {
        using var model = ModelLoader.Load(Llama);
        var tok = MolaTokenizer.Load(Llama);
        using var engine = new BatchEngine(model, tok, null);
        // A seed whose sampled text ends at EOS, not at the length limit (greedy text here runs to the limit).
        var prompt = tok.Encode("a", bos: true);
        var (options, tokens) = Enumerable.Range(0, 50).Select(seed => new GenerationOptions { MaxNewTokens = 60, Greedy = false, Seed = seed })
            .Select(o => (o, Alone(null, prompt, o, tok.EosId))).First(c => c.Item2.Count is > 0 and < 60);
        string full = tok.Decode(tokens);
        // A stop string that starts with the text's last character: that character waits to see whether the stop follows.
        var result = await engine.Submit(new EngineRequest { PromptIds = prompt, Options = options, Stop = [full[^1] + "\u0001"] }).Result;
        Assert.Equal(full, result.Text);
        Assert.Equal("stop", result.FinishReason);
    }

    [Fact]
    public void PrepareChecksOpenAiParameters()
    {
        using var model = ModelLoader.Load(Llama);
        var tok = MolaTokenizer.Load(Llama);
        using var engine = new BatchEngine(model, tok, null, "llama-tiny");
        string Param(RequestSettings s) => Assert.Throws<InvalidRequestException>(() => engine.Prepare("the cell", "prompt", -1, s, null, default)).Param;
        Assert.Equal("temperature", Param(new RequestSettings { Temperature = 2.5 }));
        Assert.Equal("top_p", Param(new RequestSettings { TopP = 0 }));
        Assert.Equal("max_tokens", Param(new RequestSettings { MaxTokens = 0 }));
        // "the cell" is BOS + 2 pieces = 3 tokens; 126 more reach 129 of the fixture's 128 positions.
        Assert.Equal(3, tok.Encode("the cell", bos: true).Count);
        Assert.Equal("max_tokens", Param(new RequestSettings { MaxTokens = 126 }));
        Assert.Equal(125, engine.Prepare("the cell", "prompt", -1, new RequestSettings { MaxTokens = 125 }, null, default).Options.MaxNewTokens);
        Assert.Equal(125, engine.Prepare("the cell", "prompt", -1, new RequestSettings(), null, default).Options.MaxNewTokens);
        Assert.Equal(16, engine.Prepare("the cell", "prompt", -1, new RequestSettings(), 16, default).Options.MaxNewTokens);
        Assert.True(engine.Prepare("the cell", "prompt", -1, new RequestSettings { Temperature = 0 }, null, default).Options.Greedy);
        Assert.False(engine.Prepare("the cell", "prompt", -1, new RequestSettings(), null, default).Options.Greedy);   // OpenAI's default: 1
        Assert.Equal("stop", Param(new RequestSettings { Stop = ["a", "b", "c", "d", "e"] }));
        Assert.Equal("model", Assert.Throws<InvalidRequestException>(() => engine.FindModel("gpt-4")).Param);
        Assert.Equal(-1, engine.FindModel("llama-tiny"));
    }

    [Fact]
    public void AfterStepIsCalledOncePerStepWithTheStepsTaken()
    {
        using var model = ModelLoader.Load(Llama);
        var steps = new List<int>();
        var tokens = TextGenerator.Generate(model, [[1, 5, 9]], new GenerationOptions { MaxNewTokens = 6 }, eosId: -1, afterStep: steps.Add);
        Assert.Equal(6, tokens[0].Count);
        Assert.Equal([1, 2, 3, 4, 5, 6], steps);
        // An EOS ends the generation: the step that produced it is the last one reported.
        int eos = tokens[0][2];
        steps.Clear();
        var stopped = TextGenerator.Generate(model, [[1, 5, 9]], new GenerationOptions { MaxNewTokens = 6 }, eosId: eos, afterStep: steps.Add);
        Assert.Equal(tokens[0].TakeWhile(t => t != eos), stopped[0]);
        Assert.Equal(Enumerable.Range(1, stopped[0].Count + 1), steps);
    }
}
