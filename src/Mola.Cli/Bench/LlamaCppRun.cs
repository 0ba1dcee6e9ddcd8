using LLama;
using LLama.Common;
using LLama.Native;
using Mola.Export;
using Mola.Models;
using TorchSharp;

namespace Mola.Cli.Bench;

/// <summary>
/// llama.cpp (LLamaSharp 0.30.0 and its CPU backend) running the bench's own random weights, for
/// <c>mola bench --against llama.cpp</c>: the model is written to GGUF F16 by <see cref="GgufWriter"/> (what
/// <c>mola export --gguf f16</c> writes) in a temporary directory, mapped by llama.cpp with the same thread count,
/// and fed the same token ids as mola. It lives in the CLI, not the library: only the bench compares against it,
/// and its native libraries load only when this class is first used.
/// </summary>
public sealed class LlamaCppRun : IDisposable
{
    /// <summary>The GGUF type llama.cpp reads: F16, the type a user of llama.cpp picks for unquantised weights.</summary>
    public const string GgufType = "f16";

    readonly string _directory;
    readonly LLamaWeights _weights;
    readonly LLamaContext _context;
    readonly int _vocab;

    /// <param name="contextSize">Positions the context holds (the longest run it is given).</param>
    /// <param name="batchSize">Tokens one decode call takes at most (the prefill's, so that it runs as one batch, as mola's does).</param>
    /// <param name="ggufType">f16 for the bench; f32 lets a test compare llama.cpp's tokens with mola's exactly.</param>
    public LlamaCppRun(CausalLM model, int threads, int contextSize, int batchSize, string ggufType = GgufType)
    {
        _vocab = model.Config.VocabSize;
        _directory = Path.Combine(Path.GetTempPath(), $"mola-bench-gguf-{Environment.ProcessId}");
        Directory.CreateDirectory(_directory);
        try
        {
            string path = Path.Combine(_directory, $"model-{ggufType}.gguf");
            var weights = model.named_parameters().Select(p => (p.name, (torch.Tensor)p.parameter)).ToList();
            // Token ids are fed directly, so any SentencePiece vocabulary will do: the embedded default model's.
            GgufWriter.Write(path, model.Config, weights, DefaultRun.ModelDirectory, ggufType, "mola-bench");
            var parameters = new ModelParams(path)
            {
                ContextSize = (uint)contextSize,
                BatchSize = (uint)batchSize,
                UBatchSize = (uint)batchSize,
                GpuLayerCount = 0,
                Threads = threads,
                BatchThreads = threads,
            };
            // llama.cpp logs some 400 lines while loading; only its errors go to stderr, so the bench's table stays readable.
            NativeLogConfig.llama_log_set((level, message) =>
            {
                if (level == LLamaLogLevel.Error) Console.Error.Write("llama.cpp: " + message);
            });
            _weights = LLamaWeights.LoadFromFile(parameters);
            _context = _weights.CreateContext(parameters);
        }
        catch
        {
            Directory.Delete(_directory, recursive: true);
            throw;
        }
    }

    /// <summary>What <see cref="Mola.Generation.TextGenerator"/> does for one prompt: the prompt in one call, then
    /// one token at a time, each the argmax of the last logits, <paramref name="newTokens"/> in all (returned).</summary>
    /// <param name="afterStep">Called after each step with the number of tokens generated, as <c>TextGenerator.Generate</c> does.</param>
    public List<int> Generate(IReadOnlyList<int> prompt, int newTokens, Action<int>? afterStep = null)
    {
        var generated = new List<int>();
        _context.NativeHandle.MemoryClear();
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Count; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Count - 1);
        int position = prompt.Count;
        for (int step = 0; step < newTokens; step++)
        {
            Decode(batch);
            int next = Argmax(_context.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
            generated.Add(next);
            afterStep?.Invoke(step + 1);
            batch.Clear();
            batch.Add(next, position++, LLamaSeqId.Zero, true);
        }
        return generated;
    }

    /// <summary>A prompt into an empty cache, one call, logits of its last token only.</summary>
    public void Prefill(IReadOnlyList<int> ids)
    {
        _context.NativeHandle.MemoryClear();
        var batch = new LLamaBatch();
        for (int i = 0; i < ids.Count; i++) batch.Add(ids[i], i, LLamaSeqId.Zero, i == ids.Count - 1);
        Decode(batch);
    }

    void Decode(LLamaBatch batch)
    {
        var result = _context.Decode(batch);
        if (result != DecodeResult.Ok) throw new MolaException($"llama.cpp: decoding {batch.TokenCount} tokens failed ({result})");
    }

    int Argmax(Span<float> logits)
    {
        int best = 0;
        for (int v = 1; v < _vocab; v++) if (logits[v] > logits[best]) best = v;
        return best;
    }

    public void Dispose()
    {
        _context.Dispose();
        _weights.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}
