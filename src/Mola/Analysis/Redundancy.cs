using Mola.Adapters;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Analysis;

/// <summary>Redundancy of one adapted module: the mean over expert pairs i &lt; j of
/// ||B_i A_i - B_j A_j||_F (no alpha/r factor); null when the module has a single expert.</summary>
public sealed record ModuleRedundancy(int Layer, string Module, int Experts, double? MeanPairwiseFrobenius);

/// <summary>A layer's redundancy: the mean over its modules (null when the layer has a single expert).</summary>
public sealed record LayerRedundancy(int Layer, int Experts, double? MeanPairwiseFrobenius);

public sealed record RedundancyReport(string AdapterDir, IReadOnlyList<ModuleRedundancy> Modules, IReadOnlyList<LayerRedundancy> Layers)
{
    /// <summary>Modules in the order they first appear (q, k, v, o, gate, up, down, then others).</summary>
    public IReadOnlyList<string> ModuleNames => Modules.Select(m => m.Module).Distinct().OrderBy(m => m, Comparer<string>.Create(AdapterFile.CompareModules)).ToList();
}

/// <summary>How alike the experts of a MoLA adapter are (the paper's figure 3): low distances between
/// the experts' updates mean the experts learned the same thing.</summary>
public static class Redundancy
{
    /// <summary>Reads an adapter directory (any layout <c>--adapter</c> reads; <paramref name="topK"/> for one saved by
    /// the original MoLA code, as <see cref="AdapterConfig.Load"/> takes it) and computes the redundancy of every layer
    /// and module.</summary>
    public static RedundancyReport Compute(string adapterDir, string? topK = null, bool topKWhereMissing = false)
    {
        using var own = AdapterFile.OwnLayout.Of(adapterDir, topK, topKWhereMissing);
        return Compute(own.Directory) with { AdapterDir = adapterDir };
    }

    static RedundancyReport Compute(string adapterDir)
    {
        string configPath = AdapterFile.ConfigPath(adapterDir);
        var (kind, numExperts) = AdapterFile.ReadKindAndExperts(configPath);
        if (kind == AdapterKind.Lora)
            throw new MolaException($"{configPath}: peft_type is \"LORA\": a plain LoRA adapter has one update per module, so there are no expert pairs to compare (redundancy needs a MoLA adapter)");
        string weightsPath = Path.Combine(adapterDir, AdapterFile.WeightsFile);
        var adapterModules = AdapterFile.ListModules(weightsPath, numExperts, configPath);

        using var file = SafeTensorsFile.Open(weightsPath);
        var modules = new List<ModuleRedundancy>();
        foreach (var m in adapterModules)
        {
            double? mean = null;
            if (m.A.Count > 1)
            {
                using var scope = NewDisposeScope();
                var a = m.A.Select(n => file.Read(n, ScalarType.Float64)).ToList();
                var b = m.B.Select(n => file.Read(n, ScalarType.Float64)).ToList();
                CheckShapes(weightsPath, m, a, b);
                foreach (var (name, t) in m.A.Concat(m.B).Zip(a.Concat(b)))
                    SafeTensorsFile.RequireFinite(t, weightsPath, name);
                mean = MeanPairwiseDistance(a, b);
            }
            modules.Add(new ModuleRedundancy(m.Layer, m.Module, m.A.Count, mean));
        }
        var layers = modules.GroupBy(m => m.Layer).OrderBy(g => g.Key).Select(g => new LayerRedundancy(
            g.Key, g.Max(m => m.Experts),
            g.All(m => m.MeanPairwiseFrobenius is not null) ? g.Average(m => m.MeanPairwiseFrobenius!.Value) : null)).ToList();
        return new RedundancyReport(adapterDir, modules, layers);
    }

    /// <summary>
    /// Mean over pairs i &lt; j of ||B_i A_i - B_j A_j||_F for experts A_e [r, in], B_e [out, r], in float64.
    /// The [out, in] products are never formed: with &lt;X, Y&gt; the Frobenius inner product,
    /// &lt;B_i A_i, B_j A_j&gt; = tr((B_i^T B_j)(A_j A_i^T)), so stacking the experts gives every inner product
    /// from two (E r) x (E r) Gram matrices, and ||D_ij||^2 = G_ii + G_jj - 2 G_ij.
    /// </summary>
    public static double MeanPairwiseDistance(IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        int experts = a.Count;
        if (experts < 2) throw new ArgumentException("needs at least two experts", nameof(a));
        var d = PairwiseDistances(a, b);
        double sum = 0;
        int pairs = 0;
        for (int i = 0; i < experts; i++)
            for (int j = i + 1; j < experts; j++)
            {
                sum += d[i, j];
                pairs++;
            }
        return sum / pairs;
    }

    /// <summary>||B_i A_i - B_j A_j||_F for every pair of experts, from the Gram matrices of <see cref="MeanPairwiseDistance"/>.</summary>
    public static double[,] PairwiseDistances(IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        int experts = a.Count;
        using var scope = NewDisposeScope();
        long r = a[0].shape[0];
        var aStack = torch.cat(a.Select(t => t.to(ScalarType.Float64)).ToList(), 0);        // [E r, in]
        var bStack = torch.cat(b.Select(t => t.to(ScalarType.Float64)).ToList(), 1);        // [out, E r]
        var gramA = aStack.matmul(aStack.t());                                              // [(i,p), (j,q)] = (A_i A_j^T)[p,q]
        var gramB = bStack.t().matmul(bStack);                                              // [(i,p), (j,q)] = (B_i^T B_j)[p,q]
        // tr((B_i^T B_j)(A_j A_i^T)) = sum_{p,q} (B_i^T B_j)[p,q] (A_i A_j^T)[p,q]
        var inner = (gramA * gramB).reshape(experts, r, experts, r).sum([1, 3]);           // [E, E]
        var sq = inner.diagonal().unsqueeze(1) + inner.diagonal().unsqueeze(0) - 2 * inner;
        var g = sq.data<double>().ToArray();
        var d = new double[experts, experts];
        for (int i = 0; i < experts; i++)
            for (int j = 0; j < experts; j++)
                // Rounding can leave a tiny negative where two experts are (nearly) equal.
                d[i, j] = i == j ? 0 : Math.Sqrt(Math.Max(0, g[i * experts + j]));
        return d;
    }

    static void CheckShapes(string path, AdapterFile.ModuleTensors m, List<Tensor> a, List<Tensor> b)
    {
        for (int e = 0; e < a.Count; e++)
        {
            if (a[e].dim() != 2 || b[e].dim() != 2 || b[e].shape[1] != a[e].shape[0])
                throw new MolaException($"{path}: {m.Prefix} expert {e}: lora_A {SafeTensorsFile.FormatShape(a[e].shape)} and lora_B {SafeTensorsFile.FormatShape(b[e].shape)} do not compose (expected A [r, in] and B [out, r])");
            if (!a[e].shape.SequenceEqual(a[0].shape) || !b[e].shape.SequenceEqual(b[0].shape))
                throw new MolaException($"{path}: {m.Prefix} expert {e}: lora_A {SafeTensorsFile.FormatShape(a[e].shape)}, lora_B {SafeTensorsFile.FormatShape(b[e].shape)} differ from expert 0's {SafeTensorsFile.FormatShape(a[0].shape)}, {SafeTensorsFile.FormatShape(b[0].shape)} (experts of one module share r, in and out)");
        }
    }
}
