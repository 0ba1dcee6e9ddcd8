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
        using var scope = torch.NewDisposeScope();
        var xf = x.to(ScalarType.Float32);
        var normed = xf * torch.rsqrt(xf.pow(2).mean([-1], keepdim: true) + _eps);
        var y = _gemma
            ? (normed * (weight.to(ScalarType.Float32) + 1.0)).to(x.dtype)   // Gemma: (1 + w), in float32
            : weight * normed.to(x.dtype);                                   // LLaMA: cast, then w
        return y.MoveToOuterDisposeScope();
    }
}
