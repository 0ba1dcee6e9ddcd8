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

    [Fact]
    public void LlamaCppTokenisesScoresAndGeneratesAsMolaDoes()
    {
        string llama = TestUtil.Fixture("llama-tiny"), lora = BatchEngineTests.RandomLora();
        string output = Path.Combine(TestUtil.TempDir(), "gguf");
        var result = ModelExport.Run(llama, lora, output, null, long.MaxValue, "f32", overwrite: false);
        string gguf = Path.Combine(output, "model-f32.gguf");
        Assert.Equal(["model-f32.gguf"], result.Files);

        using var model = ModelLoader.Load(llama);
        AdapterModel.LoadForInference(model, lora);   // merged, as mola generate --adapter does
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
            Assert.True(diff < 1e-4 * Math.Max(1, scale), $"\"{prompt}\": llama.cpp's logits differ from ours by {diff} (largest {scale})");

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
}
