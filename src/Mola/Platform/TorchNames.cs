using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Platform;

/// <summary>Device and dtype names as the command line spells them.</summary>
public static class TorchNames
{
    public static ScalarType ParseDType(string name) => name.ToLowerInvariant() switch
    {
        "float32" or "fp32" or "f32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "fp16" or "f16" => ScalarType.Float16,
        _ => throw new MolaException(n => $"{n("dtype")}: unknown dtype \"{name}\" (expected float32, bfloat16 or float16)"),
    };

    public static Device ParseDevice(string name)
    {
        var n = name.ToLowerInvariant();
        if (n == "cpu") return CPU;
        if (n == "cuda" || n.StartsWith("cuda:"))
        {
            if (!cuda.is_available())
                throw new MolaException(n => $"{n("device")} {name}: CUDA is not available in this build (build with -p:TorchBackend=cuda on a machine with a GPU)");
            return torch.device(n);
        }
        throw new MolaException(n => $"{n("device")}: unknown device \"{name}\" (expected cpu or cuda)");
    }
}
