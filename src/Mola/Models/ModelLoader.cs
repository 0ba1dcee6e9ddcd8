using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

public static class ModelLoader
{
    /// <summary>Builds the decoder of <c>DIR/config.json</c> and loads its weights, one tensor at a time,
    /// into <paramref name="dtype"/> on <paramref name="device"/>. Base parameters are frozen. Tensors the model
    /// does not use are named in one line to <paramref name="warn"/>.</summary>
    public static CausalLM Load(string directory, ScalarType dtype = ScalarType.Float32, Device? device = null, Action<string>? warn = null)
    {
        if (!System.IO.Directory.Exists(directory))
            throw new MolaException($"{directory}: base model directory not found");
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
