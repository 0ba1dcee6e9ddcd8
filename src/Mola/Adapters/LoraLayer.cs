using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>Plain LoRA (the paper's baseline): <c>y = W x + (alpha / r) B A dropout(x)</c>, A [r, in]
/// Kaiming-uniform, B [out, r] zero, in float32. Mergeable into the base weight for inference.</summary>
public sealed class LoraLayer : nn.Module<Tensor, Tensor>, Models.ILinearAdapter
{
    public Parameter lora_A;   // [r, in]
    public Parameter lora_B;   // [out, r]

    public int Layer { get; }
    public string Module { get; }
    public int Rank { get; }
    public double Scaling { get; }
    public double DropoutP { get; }
    /// <summary>True while B A is folded into the base weight (the adapter then adds nothing itself).</summary>
    public bool Merged { get; private set; }

    public LoraLayer(int layer, string module, int inFeatures, int outFeatures, int rank, double alpha, double dropout, Device device)
        : base($"{layer}_{module}")
    {
        Layer = layer;
        Module = module;
        Rank = rank;
        Scaling = alpha / rank;
        DropoutP = dropout;
        lora_A = new Parameter(torch.empty(rank, inFeatures, ScalarType.Float32, device));
        lora_B = new Parameter(torch.empty(outFeatures, rank, ScalarType.Float32, device));
        RegisterComponents();
        using var _ = torch.no_grad();
        nn.init.kaiming_uniform_(lora_A, a: Math.Sqrt(5));
        nn.init.zeros_(lora_B);
    }

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("LoraLayer wraps a Linear: call Forward(x, baseLayer)");

    public Tensor Forward(Tensor x, Models.Linear baseLayer)
    {
        if (Merged) return baseLayer.Base(x);
        using var scope = NewDisposeScope();
        var result = baseLayer.Base(x);
        var xf = x.to(ScalarType.Float32);
        if (DropoutP > 0 && training) xf = nn.functional.dropout(xf, DropoutP, training: true);
        var delta = xf.matmul(lora_A.t()).matmul(lora_B.t()) * Scaling;
        return (result + delta.to(result.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>W += (alpha / r) B A, in the base weight's dtype.</summary>
    public void Merge(Models.Linear baseLayer)
    {
        if (Merged) return;
        using var _ = torch.no_grad();
        using var delta = DeltaWeight(baseLayer.weight.dtype);
        baseLayer.weight.add_(delta);
        Merged = true;
    }

    /// <summary>W -= (alpha / r) B A (exact in float32 up to rounding; lossy in bf16/fp16).</summary>
    public void Unmerge(Models.Linear baseLayer)
    {
        if (!Merged) return;
        using var _ = torch.no_grad();
        using var delta = DeltaWeight(baseLayer.weight.dtype);
        baseLayer.weight.sub_(delta);
        Merged = false;
    }

    Tensor DeltaWeight(ScalarType dtype)
    {
        using var ba = lora_B.matmul(lora_A);
        using var scaled = ba * Scaling;
        return scaled.to(dtype);
    }
}
