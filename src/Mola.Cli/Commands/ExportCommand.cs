using System.CommandLine;
using System.Globalization;
using Mola.Export;
using Mola.Platform;

namespace Mola.Cli.Commands;

public static class ExportCommand
{
    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption();
        var adapter = Cli.AdapterOption();
        adapter.Description = "LoRA adapter directory to merge into the weights (W + alpha/r B A); a MoLA adapter cannot be merged " +
            "(its router picks experts per token). Without it the base is written again (a .bin checkpoint as safetensors)";
        var output = new Option<string>("--output") { Description = "Directory to write (must not exist or be empty, unless --overwrite)", Required = true };
        var dtype = new Option<string?>("--dtype") { Description = "Dtype to merge in and write: float32, bfloat16 or float16 (default: the dtype the base is stored in)" };
        var shard = new Option<string>("--max-shard-size")
        {
            Description = "Largest safetensors shard, e.g. 5GB, 500MB (a larger checkpoint is split, with model.safetensors.index.json)",
            DefaultValueFactory = _ => "5GB",
        };
        var gguf = new Option<bool>("--gguf") { Description = "Write a GGUF file for llama.cpp (OUTPUT/model-TYPE.gguf) instead of safetensors (LLaMA and Mistral; needs tokenizer.model)" };
        var ggufType = new Option<string>("--gguf-type") { Description = "GGUF tensor type of the matrices: f16, bf16 or f32 (norms are always f32)", DefaultValueFactory = _ => "f16" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace a non-empty output directory (only once the new export is complete)" };
        var json = Cli.JsonOption();
        var cmd = new Command("export", "Write a base model, with a LoRA adapter merged in, as a Hugging Face checkpoint (safetensors shards, " +
            "index, config.json, tokenizer files) or, with --gguf, as a GGUF file for llama.cpp / Ollama.")
        { baseModel, adapter, output, dtype, shard, gguf, ggufType, overwrite, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            if (p.GetResult(ggufType) is { Implicit: false } && !p.GetValue(gguf)) throw new MolaException("--gguf-type goes with --gguf");
            var type = p.GetValue(dtype) is string d ? TorchNames.ParseDType(d) : (TorchSharp.torch.ScalarType?)null;
            long maxShard = ParseSize(p.GetValue(shard)!);
            var result = ModelExport.Run(p.GetValue(baseModel)!, p.GetValue(adapter), p.GetValue(output)!, type, maxShard,
                p.GetValue(gguf) ? p.GetValue(ggufType) : null, p.GetValue(overwrite), o.Line);
            o.Line($"wrote {result.Output}: {string.Join(", ", result.Files)} ({result.Bytes / 1e6:F1} MB, {result.Tensors} tensors, {result.DType}" +
                $"{(result.Merged ? ", LoRA merged" : "")})");
            return new { output = result.Output, files = result.Files, bytes = result.Bytes, tensors = result.Tensors, dtype = result.DType, merged = result.Merged };
        }));
        return cmd;
    }

    /// <summary>A size as Transformers writes it: a number of bytes, or with a unit KB, MB, GB (powers of 1000) or KiB, MiB, GiB.</summary>
    public static long ParseSize(string s)
    {
        string t = s.Trim();
        var units = new (string Unit, long Factor)[] { ("GiB", 1L << 30), ("MiB", 1L << 20), ("KiB", 1L << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000), ("B", 1) };
        foreach (var (unit, factor) in units)
            if (t.EndsWith(unit, StringComparison.OrdinalIgnoreCase))
            {
                t = t[..^unit.Length].Trim();
                return double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v > 0 && v * factor < long.MaxValue
                    ? (long)(v * factor) : throw Bad();
            }
        return long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long n) && n > 0 ? n : throw Bad();
        MolaException Bad() => new($"--max-shard-size {s}: expected a positive size such as 5GB, 500MB or a number of bytes");
    }
}
