using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>Device and dtype names as the command line spells them.</summary>
public static class TorchOptions
{
    public static ScalarType ParseDType(string name) => name.ToLowerInvariant() switch
    {
        "float32" or "fp32" or "f32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "fp16" or "f16" => ScalarType.Float16,
        _ => throw new MolaException($"--dtype: unknown dtype \"{name}\" (expected float32, bfloat16 or float16)"),
    };

    public static Device ParseDevice(string name)
    {
        var n = name.ToLowerInvariant();
        if (n == "cpu") return CPU;
        if (n == "cuda" || n.StartsWith("cuda:"))
        {
            if (!cuda.is_available())
                throw new MolaException($"--device {name}: CUDA is not available in this build (build with -p:TorchBackend=cuda on a machine with a GPU)");
            return torch.device(n);
        }
        throw new MolaException($"--device: unknown device \"{name}\" (expected cpu or cuda)");
    }

    static bool _initialised;

    /// <summary>Once per process: threads for CPU work; freed native memory kept for reuse (see <see cref="GlibcMalloc"/>).</summary>
    public static void Initialise()
    {
        if (_initialised) return;
        _initialised = true;
        torch.set_num_threads(Environment.ProcessorCount);
        GlibcMalloc.KeepFreedMemory();
    }
}

public static class ModelLoader
{
    /// <summary>Builds the decoder of <c>DIR/config.json</c> and loads its weights, one tensor at a time,
    /// into <paramref name="dtype"/> on <paramref name="device"/>. Base parameters are frozen. Tensors the model
    /// does not use are named in one line to <paramref name="warn"/>.</summary>
    public static CausalLM Load(string directory, ScalarType dtype = ScalarType.Float32, Device? device = null, Action<string>? warn = null)
    {
        if (!System.IO.Directory.Exists(directory))
            throw new MolaException($"{directory}: base model directory not found");
        TorchOptions.Initialise();
        var config = ModelConfig.Load(directory);
        using var ckpt = Checkpoint.Open(directory);
        ckpt.CheckAgainst(config, Path.Combine(directory, "config.json"));
        var model = new CausalLM(config, dtype, device ?? CPU);
        try
        {
            ckpt.LoadInto(model);
            var unused = ckpt.UnusedBy(model, config, Path.Combine(directory, "config.json"));
            if (unused.Count > 0)
                warn?.Invoke($"warning: {directory}: {unused.Count} tensor{(unused.Count == 1 ? "" : "s")} of the checkpoint not used by " +
                    $"model_type {config.ModelType} ({string.Join(", ", unused.Take(5))}{(unused.Count > 5 ? ", ..." : "")})");
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        return model;
    }
}
