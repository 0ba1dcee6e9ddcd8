using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>RMSNorm computed in float32. LLaMA/Mistral scale by <c>w</c>; Gemma by <c>1 + w</c>.</summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    readonly double _eps;
    readonly bool _gemma;

    public RmsNorm(string name, int size, double eps, bool gemma, ScalarType dtype, Device device) : base(name)
    {
        weight = new Parameter(torch.empty(size, dtype, device), requires_grad: false);
        _eps = eps;
        _gemma = gemma;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (OneRowApplies(x)) return OneRow(x);
        using var scope = torch.NewDisposeScope();
        var xf = x.to(ScalarType.Float32);
        // mean(x^2) as |x|^2 / D: libtorch's vector norm reads x once into one value per row, where pow then mean
        // writes and reads a squared copy of x (5x faster forward at [512, 1024], bench/NOTES.md).
        var norm = torch.linalg.vector_norm(xf, 2, [-1], keepdim: true);
        var normed = xf * torch.rsqrt(norm.square() / x.shape[^1] + _eps);
        var y = _gemma
            ? (normed * (weight.to(ScalarType.Float32) + 1.0)).to(x.dtype)   // Gemma: (1 + w), in float32
            : weight * normed.to(x.dtype);                                   // LLaMA: cast, then w
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>Whether <see cref="OneRow"/> computes this call: one bfloat16 row on the CPU without autograd (decoding),
    /// where libtorch's nine operations cost ~10 us each, several times the arithmetic.</summary>
    bool OneRowApplies(Tensor x) =>
        x.dtype == ScalarType.BFloat16 && weight.dtype == ScalarType.BFloat16 && x.device_type == DeviceType.CPU
        && x.numel() == weight.numel() && x.is_contiguous() && weight.is_contiguous()
        && !(is_grad_enabled() && x.requires_grad);

    /// <summary>
    /// The same arithmetic as the libtorch path, in the same roundings but one: the norm's sum of squares is accumulated
    /// in double (libtorch sums in its own order), rounded to float32, then squared, divided and added to in float32,
    /// 1 / sqrt, each element scaled in float32 and rounded to bfloat16, then times the weight (LLaMA, rounded again)
    /// or times 1 + w in float32 (Gemma). Tested against the libtorch path: equal bit for bit but for 1 element in
    /// 65,536, one bfloat16 step apart (the norm's last float32 bit).
    /// </summary>
    unsafe Tensor OneRow(Tensor x)
    {
        var y = torch.empty(x.shape, ScalarType.BFloat16);
        OneRow((ushort*)Bf16Gemv.Address(x), (ushort*)Bf16Gemv.Address(y));
        return y;
    }

    /// <summary><see cref="OneRow(Tensor)"/> from one bfloat16 row in native memory to another (they may not overlap).</summary>
    internal unsafe void OneRow(ushort* xs, ushort* ys)
    {
        int n = (int)weight.numel();
        var ws = (ushort*)Bf16Gemv.Address(weight);
        double acc = 0;
        for (int i = 0; i < n; i++)
        {
            double v = Bf16Gemv.Widen(xs[i]);
            acc += v * v;
        }
        float norm = (float)Math.Sqrt(acc);
        float scale = 1f / MathF.Sqrt(norm * norm / n + (float)_eps);
        for (int i = 0; i < n; i++)
        {
            float normed = Bf16Gemv.Widen(xs[i]) * scale;
            ys[i] = _gemma
                ? Bf16Gemv.Round(normed * (Bf16Gemv.Widen(ws[i]) + 1f))
                : Bf16Gemv.Round(Bf16Gemv.Widen(ws[i]) * Bf16Gemv.Widen(Bf16Gemv.Round(normed)));
        }
    }
}
