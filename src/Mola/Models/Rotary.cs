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
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var rotated = cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        return (x * cos + rotated * sin).MoveToOuterDisposeScope();
    }
}
