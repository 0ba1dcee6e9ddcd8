using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Export;

/// <summary>
/// Writes a model's weights as a Hugging Face checkpoint: <c>model.safetensors</c>, or shards of at most
/// <c>maxShardBytes</c> with <c>model.safetensors.index.json</c> (as Transformers' <c>save_pretrained</c>), the
/// base's <c>config.json</c> with its <c>torch_dtype</c> set to what was written, and its tokenizer files copied.
/// </summary>
public static class HfCheckpointWriter
{
    /// <summary>The files of a model directory besides its config and weights that a checkpoint carries along.</summary>
    public static readonly string[] CopiedFiles =
        ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "generation_config.json"];

    public static string TorchDtypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => throw new MolaException($"cannot export weights of dtype {t}"),
    };

    /// <summary>Writes <paramref name="tensors"/> (HF names, in model order) into <paramref name="directory"/> (which
    /// must exist and be empty). Returns the weight files written.</summary>
    public static List<string> Write(string directory, IReadOnlyList<(string Name, Tensor Tensor)> tensors, string baseDirectory, long maxShardBytes)
    {
        var shards = new List<List<(string Name, Tensor Tensor)>> { new() };
        long inShard = 0, total = 0;
        foreach (var t in tensors)
        {
            long bytes = t.Tensor.numel() * t.Tensor.element_size();
            if (inShard > 0 && inShard + bytes > maxShardBytes)
            {
                shards.Add(new());
                inShard = 0;
            }
            shards[^1].Add(t);
            inShard += bytes;
            total += bytes;
        }
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        var files = new List<string>();
        if (shards.Count == 1)
        {
            files.Add("model.safetensors");
            SafeTensorsFile.Save(Path.Combine(directory, files[0]), tensors.Select(t => KeyValuePair.Create(t.Name, t.Tensor)), meta);
        }
        else
        {
            var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
            for (int s = 0; s < shards.Count; s++)
            {
                string name = $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
                files.Add(name);
                SafeTensorsFile.Save(Path.Combine(directory, name), shards[s].Select(t => KeyValuePair.Create(t.Name, t.Tensor)), meta);
                foreach (var t in shards[s]) weightMap[t.Name] = name;
            }
            var index = new { metadata = new { total_size = total }, weight_map = weightMap };
            File.WriteAllText(Path.Combine(directory, "model.safetensors.index.json"), JsonSerializer.Serialize(index, Indented));
        }
        WriteConfig(baseDirectory, directory, tensors[0].Tensor.dtype);
        foreach (var f in CopiedFiles)
            if (File.Exists(Path.Combine(baseDirectory, f))) File.Copy(Path.Combine(baseDirectory, f), Path.Combine(directory, f));
        return files;
    }

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    static void WriteConfig(string baseDirectory, string directory, ScalarType dtype)
    {
        var config = JsonFile.ReadObject(Path.Combine(baseDirectory, "config.json"), "a model config");
        config["torch_dtype"] = TorchDtypeName(dtype);
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString(Indented));
    }
}
