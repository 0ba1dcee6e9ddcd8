using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>Rotate-half rotary position embedding (the Hugging Face layout) with base <c>rope_theta</c>.</summary>
public sealed class Rotary
{
    readonly Tensor _invFreq; // [head_dim / 2], float32

    public Rotary(int headDim, double theta, Device device)
    {
        using var exponents = arange(0, headDim, 2, ScalarType.Float64) / headDim;
        using var f = pow(theta, exponents).reciprocal();
        _invFreq = f.to(ScalarType.Float32, device).DetachFromDisposeScope();
    }

    /// <summary>cos and sin for <paramref name="positions"/> [B, T], shaped [B, 1, T, head_dim].</summary>
    public (Tensor Cos, Tensor Sin) Angles(Tensor positions, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var freqs = positions.to(ScalarType.Float32).unsqueeze(-1) * _invFreq; // [B, T, hd/2]
        var emb = cat([freqs, freqs], -1).unsqueeze(1);
        var cos = emb.cos().to(dtype);
        var sin = emb.sin().to(dtype);
        return (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
    }

    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        if (OneTokenApplies(x, cos, sin)) return OneToken(x, cos, sin);
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var rotated = cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        return (x * cos + rotated * sin).MoveToOuterDisposeScope();
    }

    /// <summary>Whether <see cref="OneToken"/> computes this call: one bfloat16 token's heads [1, H, 1, D] on the CPU
    /// without autograd (decoding), where the libtorch path is seven operations for 2 x H x D multiplications.</summary>
    static bool OneTokenApplies(Tensor x, Tensor cos, Tensor sin) =>
        x.dtype == ScalarType.BFloat16 && cos.dtype == ScalarType.BFloat16 && sin.dtype == ScalarType.BFloat16
        && x.device_type == DeviceType.CPU && x.dim() == 4 && x.shape[0] == 1 && x.shape[2] == 1
        && cos.numel() == x.shape[3] && sin.numel() == x.shape[3]
        && x.is_contiguous() && cos.is_contiguous() && sin.is_contiguous()
        && !(is_grad_enabled() && x.requires_grad);

    /// <summary><c>x cos + rotate_half(x) sin</c> with libtorch's bfloat16 roundings: each product rounded, then their
    /// sum (tested bit for bit against the libtorch path).</summary>
    static unsafe Tensor OneToken(Tensor x, Tensor cos, Tensor sin)
    {
        var y = empty(x.shape, ScalarType.BFloat16);
        OneToken((ushort*)Bf16Gemv.Address(x), (ushort*)Bf16Gemv.Address(cos), (ushort*)Bf16Gemv.Address(sin),
            (ushort*)Bf16Gemv.Address(y), (int)x.shape[1], (int)x.shape[3]);
        return y;
    }

    /// <summary><see cref="OneToken(Tensor, Tensor, Tensor)"/> over <paramref name="heads"/> rows of <paramref name="d"/>
    /// in native memory, <paramref name="xs"/> into <paramref name="ys"/> (they may not overlap).</summary>
    internal static unsafe void OneToken(ushort* xs, ushort* cs, ushort* ss, ushort* ys, int heads, int d)
    {
        int half = d / 2;
        for (int h = 0; h < heads; h++)
        {
            ushort* row = xs + h * d, output = ys + h * d;
            for (int i = 0; i < d; i++)
            {
                float rotated = i < half ? -Bf16Gemv.Widen(row[i + half]) : Bf16Gemv.Widen(row[i - half]);
                float a = Bf16Gemv.Widen(Bf16Gemv.Round(Bf16Gemv.Widen(row[i]) * Bf16Gemv.Widen(cs[i])));
                float b = Bf16Gemv.Widen(Bf16Gemv.Round(rotated * Bf16Gemv.Widen(ss[i])));
                output[i] = Bf16Gemv.Round(a + b);
            }
        }
    }
}
