using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>Plain LoRA (the paper's baseline): <c>y = W x + (alpha / r) B A dropout(x)</c>, A [r, in]
/// Kaiming-uniform, B [out, r] zero, in float32 (over a bfloat16/float16 base the products run in the base dtype by
/// default, <see cref="AdapterPrecision"/>). Mergeable into the base weight for inference.</summary>
public sealed class LoraLayer : nn.Module<Tensor, Tensor>, IAdapterLayer
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
    public AdapterPrecision Precision { get; set; }

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

    public IEnumerable<(string Name, Tensor Tensor)> PeftTensors(string prefix) =>
        [(AdapterFile.LoraA(prefix), lora_A), (AdapterFile.LoraB(prefix), lora_B)];

    public Tensor Forward(Tensor x, Models.Linear baseLayer)
    {
        if (Merged) return baseLayer.Base(x);
        using var scope = NewDisposeScope();
        // Flat [N, in] rows: a 3-D matmul against the thin A takes a much slower backward (bench/NOTES.md).
        var x2 = x.reshape(-1, lora_A.shape[1]);
        var xa = Precision.ProductRows(x, lora_A.shape[1]);                 // float32, or the base's rows (mixed)
        if (DropoutP > 0 && training) xa = nn.functional.dropout(xa, DropoutP, training: true);
        var h = xa.mm(lora_A.In(xa.dtype).t());                              // [N, r]
        // As in MolaLayer: B^T contiguous when training on more tokens than B^T has rows, so that its
        // gradient comes as h^T g (the g^T h of a transposed view is an order of magnitude slower at r = 8).
        // (In bfloat16 the copy costs more than it wins, as in MolaLayer.)
        var bT = TrainingLayout.BackwardFollows && h.shape[0] > Rank && h.dtype == ScalarType.Float32 ? lora_B.t().contiguous() : lora_B.In(h.dtype).t();
        var y = baseLayer.Base(x2);
        // y += scaling * h B^T in place, one product accumulating into the base output.
        if (y.dtype == ScalarType.Float32)
            y.addmm_(h, bT, beta: 1, alpha: (float)Scaling);
        else if (h.dtype == y.dtype)
            y.add_(h.mul(Scaling).mm(bT));   // mixed: the scale on the [N, r] product, not a pass over [N, out]
        else
            y.add_(h.mm(bT).mul_(Scaling).to(y.dtype));
        return y.view(x.shape.SkipLast(1).Append(lora_B.shape[0]).ToArray()).MoveToOuterDisposeScope();
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
