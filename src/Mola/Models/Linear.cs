using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>
/// A bias-free linear map <c>y = x W^T</c> whose weight is named as in the checkpoint. This is the
/// one seam adapters use: setting <see cref="Adapter"/> routes the call through it, so the decoder
/// knows nothing about adapters. Adapter parameters are not registered here, so the model's
/// <c>named_parameters()</c> stay the checkpoint keys.
/// </summary>
public sealed class Linear : nn.Module<Tensor, Tensor>
{
    public Parameter weight;

    public int InFeatures { get; }
    public int OutFeatures { get; }
    public ILinearAdapter? Adapter { get; set; }

    public Linear(string name, int inFeatures, int outFeatures, ScalarType dtype, Device device) : base(name)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        weight = new Parameter(torch.empty(outFeatures, inFeatures, dtype, device), requires_grad: false);
        RegisterComponents();
    }

    /// <summary>The frozen map alone.</summary>
    public Tensor Base(Tensor x) => Product(x, weight);

    /// <summary><c>x W^T</c>; decoding's few rows over bfloat16 weights by <see cref="Bf16Gemv"/>, which reads them faster.</summary>
    public static Tensor Product(Tensor x, Tensor w) => Bf16Gemv.Applies(x, w) ? Bf16Gemv.Linear(x, w) : nn.functional.linear(x, w);

    public override Tensor forward(Tensor x) => Adapter is null ? Base(x) : Adapter.Forward(x, this);
}
