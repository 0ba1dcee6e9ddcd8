using LLama;
using LLama.Common;
using LLama.Native;
using Mola.Adapters;
using Mola.Export;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>
/// The GGUF export run by llama.cpp itself (LLamaSharp 0.30.0 and its CPU backend, in this process): its tokens
/// of a prompt equal ours, its logits equal ours to float tolerance, and its greedy continuation equals
/// <c>mola generate</c>'s, for llama-tiny with a LoRA merged in (its real 400-piece SentencePiece tokenizer).
/// </summary>
[Trait("Category", "Slow")]
public class ExportGgufTests
{
    static readonly string[] Prompts = ["Hello world", "The answer is", "a b c d e f g", "Once upon a time, there was"];
    const int NewTokens = 12;

    /// <summary>llama-tiny with a LoRA merged in; mistral-tiny (grouped-query attention: k has 2 heads of q's 4, rope_theta
    /// 1e6) without its sliding window, which GGUF's llama architecture does not have, and with llama-tiny's tokenizer.
    /// In float32 the logits agree to float32 rounding and the greedy tokens are equal; in float16 the weights are
    /// rounded, so only the logits are compared, to float16's precision.</summary>
    [Theory]
    [InlineData("llama-tiny", true, "f32")]
    [InlineData("mistral-tiny", false, "f32")]
    [InlineData("llama-tiny", true, "f16")]
    [InlineData("mistral-tiny", false, "bf16")]
    public void LlamaCppTokenisesScoresAndGeneratesAsMolaDoes(string fixture, bool withLora, string type)
    {
        string llama = TestUtil.CopyFixture(fixture);
        if (fixture == "mistral-tiny")
        {
            File.Copy(TestUtil.Fixture("llama-tiny", "tokenizer.model"), Path.Combine(llama, "tokenizer.model"));
            string cfg = Path.Combine(llama, "config.json");
            File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"sliding_window\": 5", "\"sliding_window\": null"));
        }
        string? lora = withLora ? BatchEngineTests.RandomLora() : null;
        string output = Path.Combine(TestUtil.TempDir(), "gguf");
        var result = ModelExport.Run(llama, lora, output, ScalarType.Float32, long.MaxValue, type, overwrite: false);
        string gguf = Path.Combine(output, $"model-{type}.gguf");
        Assert.Equal([$"model-{type}.gguf"], result.Files);
        bool exact = type == "f32";

        using var model = ModelLoader.Load(llama);
        if (lora is not null) AdapterModel.LoadForInference(model, lora);   // merged, as mola generate --adapter does
        var tok = MolaTokenizer.Load(llama, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);

        // A float32 KV cache (llama.cpp's default is float16), so that the comparison is of float32 with float32.
        var parameters = new ModelParams(gguf)
        {
            ContextSize = 128,
            BatchSize = 128,
            GpuLayerCount = 0,
            Threads = 1,
            TypeK = GGMLType.GGML_TYPE_F32,
            TypeV = GGMLType.GGML_TYPE_F32,
            FlashAttention = false,
        };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        foreach (var prompt in Prompts)
        {
            var ids = tok.Encode(prompt, bos: true);
            using var context = weights.CreateContext(parameters);
            var theirIds = context.Tokenize(prompt, addBos: true, special: false).Select(t => (int)t).ToList();
            Assert.Equal(ids, theirIds);

            // The logits after the prompt: ours (float32, merged weights) against llama.cpp's.
            float[] ourLogits;
            using (no_grad())
            using (var input = tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0))
            using (var logits = model.Forward(input))
                ourLogits = logits[0, -1].data<float>().ToArray();

            var batch = new LLamaBatch();
            for (int i = 0; i < ids.Count; i++) batch.Add(ids[i], i, LLamaSeqId.Zero, i == ids.Count - 1);
            Assert.Equal(DecodeResult.Ok, context.Decode(batch));
            var theirLogits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1).ToArray();
            Assert.Equal(ourLogits.Length, theirLogits.Length);
            double diff = ourLogits.Zip(theirLogits).Max(p => Math.Abs(p.First - p.Second)), scale = ourLogits.Max(Math.Abs);
            Assert.True(diff < (exact ? 1e-4 : type == "f16" ? 1e-2 : 5e-2) * Math.Max(1, scale), $"\"{prompt}\": llama.cpp's logits differ from ours by {diff} (largest {scale})");

            if (!exact) continue;
            var ours = TextGenerator.Generate(model, [ids], new GenerationOptions { MaxNewTokens = NewTokens, Greedy = true }, tok.EosId)[0];
            var theirs = new List<int>();
            int pos = ids.Count;
            while (theirs.Count < NewTokens)
            {
                var l = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
                int next = 0;
                for (int v = 1; v < l.Length; v++) if (l[v] > l[next]) next = v;
                theirs.Add(next);
                if (next == tok.EosId) break;
                batch.Clear();
                batch.Add(next, pos++, LLamaSeqId.Zero, true);
                Assert.Equal(DecodeResult.Ok, context.Decode(batch));
            }
            Assert.Equal(ours, theirs);
        }
    }

    /// <summary><c>mola bench --against llama.cpp</c>'s llama.cpp run decodes the model it is given: written as GGUF F32, its
    /// greedy tokens equal <c>mola generate</c>'s on llama-tiny (so the side-by-side times the same work on the same weights).</summary>
    [Fact]
    public void TheBenchsLlamaCppRunGeneratesMolasTokens()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        List<int> prompt = [1, 17, 250, 3, 99, 42, 7];
        var ours = TextGenerator.Generate(model, [prompt], new GenerationOptions { MaxNewTokens = NewTokens, Greedy = true }, eosId: -1)[0];
        using var llama = new Mola.Cli.Bench.LlamaCppRun(model, threads: 1, contextSize: 64, batchSize: 32, ggufType: "f32");
        Assert.Equal(ours, llama.Generate(prompt, NewTokens));
        Assert.Equal(ours, llama.Generate(prompt, NewTokens));   // the cache is cleared between runs
        llama.Prefill(Enumerable.Range(3, 30).ToList());
    }
}
