using Mola.Adapters;
using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Export;

/// <summary>What <see cref="ModelExport.Run"/> wrote.</summary>
public sealed record ExportResult(string Output, IReadOnlyList<string> Files, int Tensors, long Bytes, string DType, bool Merged);

/// <summary>
/// A base model with a LoRA adapter merged into its weights (W + alpha/r B A), or the base alone, written as a
/// Hugging Face checkpoint or a GGUF file. The output is written into a temporary directory beside it and moved
/// into place at the end, so a failed export leaves nothing half-written.
/// </summary>
public static class ModelExport
{
    /// <param name="dtype">The dtype written (and merged in); null: the dtype the base's embeddings are stored in.</param>
    /// <param name="ggufType">f16, bf16 or f32 to write <c>model-TYPE.gguf</c> instead of safetensors; null for safetensors.</param>
    public static ExportResult Run(string baseDirectory, string? adapterDirectory, string output, ScalarType? dtype, long maxShardBytes,
        string? ggufType, bool overwrite, Action<string>? log = null)
    {
        if (!Directory.Exists(baseDirectory)) throw new MolaException($"{baseDirectory}: base model directory not found");
        if (ggufType is not null) GgufWriter.Type(ggufType);   // a bad type fails before anything loads
        if (maxShardBytes <= 0) throw new MolaException($"maximum shard size {maxShardBytes} bytes: expected a positive size");
        if (adapterDirectory is not null)
        {
            if (!Directory.Exists(adapterDirectory)) throw new MolaException($"{adapterDirectory}: adapter directory not found");
            // Only the kind matters here: a stand-in top-k lets an adapter saved by the original MoLA code (which records
            // none) be recognised as MoLA and refused for the real reason, not asked for a --top-k it cannot use.
            if (AdapterConfig.Load(adapterDirectory, topK: "1", topKWhereMissing: true).Kind == AdapterKind.Mola)
                throw new MolaException(n => $"{adapterDirectory}: a MoLA adapter cannot be merged into the base weights: its router picks experts " +
                    $"per token, so no single weight matrix equals it; use it with {n("adapter")} (generate, eval, serve) instead");
        }
        string full = Path.GetFullPath(output);
        if (full == Path.GetFullPath(baseDirectory) || (adapterDirectory is not null && full == Path.GetFullPath(adapterDirectory)))
            throw new MolaException($"{output}: the output directory is an input; choose another");
        if (File.Exists(full)) throw new MolaException($"{output}: exists and is a file; the output is a directory");
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any() && !overwrite)
            throw new MolaException($"{output}: exists and is not empty; choose another output or allow overwriting it");

        var stored = StoredDType(baseDirectory);
        var type = dtype ?? stored;
        if (type is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new MolaException($"{baseDirectory}: weights stored as {type}; export writes float32, bfloat16 or float16");
        using var model = ModelLoader.Load(baseDirectory, type, CPU, log);
        if (ggufType is not null && model.Config.SlidingWindow is int window && window < model.Config.MaxPositionEmbeddings)
            log?.Invoke($"warning: {baseDirectory}: sliding_window {window} is not written to GGUF (llama.cpp's llama architecture, as its own " +
                $"converter writes Mistral, attends to the whole context): llama.cpp's outputs differ from mola's past {window} tokens");
        // The base parameters before the adapter is attached: merging changes them in place.
        var weights = model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).ToList();
        if (adapterDirectory is not null) AdapterModel.LoadForInference(model, adapterDirectory);   // LoRA: merged into the weights

        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string tmp = full + ".tmp-" + Environment.ProcessId;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        Directory.CreateDirectory(tmp);
        List<string> files;
        try
        {
            if (ggufType is null) files = HfCheckpointWriter.Write(tmp, weights, baseDirectory, maxShardBytes);
            else
            {
                files = [$"model-{ggufType}.gguf"];
                GgufWriter.Write(Path.Combine(tmp, files[0]), model.Config, weights, baseDirectory, ggufType, Path.GetFileName(full));
            }
            if (Directory.Exists(full)) Directory.Delete(full, recursive: true);
            Directory.Move(tmp, full);
        }
        catch
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            throw;
        }
        long bytes = files.Sum(f => new FileInfo(Path.Combine(full, f)).Length);
        return new ExportResult(full, files, weights.Count, bytes, HfCheckpointWriter.TorchDtypeName(type), adapterDirectory is not null);
    }

    static ScalarType StoredDType(string baseDirectory)
    {
        using var ckpt = Checkpoint.Open(baseDirectory);
        const string embeddings = "model.embed_tokens.weight";
        if (!ckpt.Contains(embeddings)) throw new MolaException($"{baseDirectory}: tensor \"{embeddings}\" missing");
        return ckpt.Info(embeddings).DType switch
        {
            "F32" => ScalarType.Float32,
            "BF16" => ScalarType.BFloat16,
            "F16" => ScalarType.Float16,
            "F64" => ScalarType.Float32,
            var d => throw new MolaException($"{ckpt.FileOf(embeddings)}: tensor \"{embeddings}\" stored as {d}; expected floating-point weights"),
        };
    }
}
