using System.Globalization;
using System.Text;
using Mola.Adapters;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Analysis;

/// <summary>PL_Alpha_Hill of one frozen weight matrix W (the spectrum of W^T W).</summary>
public sealed record ModuleQuality(int Layer, string Module, PowerLawFit Fit);

/// <summary>A layer's quality: the mean PL_Alpha_Hill over its modules (lower: more heavy-tailed, better trained).</summary>
public sealed record LayerAlpha(int Layer, double Alpha);

public sealed record LayerQualityReport(string BaseModel, XminSearch Search, IReadOnlyList<ModuleQuality> Modules, IReadOnlyList<LayerAlpha> Layers)
{
    public double[] Alphas => Layers.Select(l => l.Alpha).ToArray();
}

/// <summary>
/// Layer quality of a base model (the paper's Appendix H, AlphaLoRA's allocation signal): for every targeted weight
/// W of every decoder layer, the eigenvalues of W^T W (the squared singular values, from the smaller Gram
/// matrix in float64: <see cref="Eigenvalues"/>) and their PL_Alpha_Hill (<see cref="PowerLaw"/>); per layer the mean over the modules. The checkpoint is
/// read one matrix at a time, so memory stays at one float64 matrix, its Gram matrix and the eigensolver's
/// workspace (about 0.6 GB for a 7B MLP matrix: 361 MB for [11008, 4096], 134 MB for the [4096, 4096] Gram).
/// </summary>
public static class LayerQuality
{
    /// <param name="progress">Called after each matrix with (matrices done, matrices in all, the matrix's name).</param>
    public static LayerQualityReport Compute(string baseModelDir, IReadOnlyList<string> targets, XminSearch search = XminSearch.Peak,
        Action<int, int, string>? progress = null)
    {
        var config = ModelConfig.Load(baseModelDir);
        using var ckpt = Checkpoint.Open(baseModelDir);
        int total = config.NumHiddenLayers * targets.Count, done = 0;
        var modules = new List<ModuleQuality>();
        for (int layer = 0; layer < config.NumHiddenLayers; layer++)
            foreach (var m in targets)
            {
                string name = $"model.layers.{layer}.{TargetModules.Parent(m)}.{m}.weight";
                var fit = Fit(ckpt, name);
                modules.Add(new ModuleQuality(layer, m, fit));
                progress?.Invoke(++done, total, name);
            }
        var layers = modules.GroupBy(q => q.Layer).Select(g => new LayerAlpha(g.Key, g.Average(q => q.Fit.Alpha))).ToList();
        return new LayerQualityReport(baseModelDir, search, modules, layers);

        PowerLawFit Fit(Checkpoint c, string name)
        {
            using var scope = NewDisposeScope();
            var w = c.Read(name, ScalarType.Float64);
            if (w.dim() != 2) throw new MolaException($"{c.FileOf(name)}: tensor \"{name}\" has shape {SafeTensorsFile.FormatShape(w.shape)}, expected a matrix");
            SafeTensorsFile.RequireFinite(w, c.FileOf(name), name);
            return PowerLaw.Fit(Eigenvalues(w), search);
        }
    }

    /// <summary>The eigenvalues of W^T W that can be nonzero (min(out, in) of them, descending): libtorch's eigvalsh of
    /// the smaller Gram matrix (W^T W or W W^T) in float64. Several times cheaper than the singular values (a GEMM and
    /// a symmetric eigensolver of the smaller side, against a bidiagonalisation of the whole matrix: measured in
    /// bench/NOTES.md), and as accurate where the fit looks: forming and solving the Gram matrix errs by about
    /// max(out, in) eps lambda_max in absolute terms, so each lambda keeps a relative accuracy of that over lambda /
    /// lambda_max, some 1e-9 for an eigenvalue 1e-4 of the largest, while the tail PL_Alpha_Hill fits starts at the
    /// spectrum's histogram peak or above. Values below that floor are not resolved by this route and are returned
    /// as 0 (<see cref="PowerLaw.Fit"/> drops zeros; it already drops anything below 1e-12 of the largest).</summary>
    public static double[] Eigenvalues(Tensor w)
    {
        using var scope = NewDisposeScope();
        var a = w.to(ScalarType.Float64);
        long rows = a.shape[0], cols = a.shape[1];
        var gram = rows >= cols ? a.t().matmul(a) : a.matmul(a.t());
        var lambda = torch.linalg.eigvalsh(gram).flip(0);
        double floor = Math.Max(rows, cols) * MachineEpsilon * lambda[0].item<double>();
        return lambda.data<double>().Select(v => v > floor ? v : 0).ToArray();
    }

    /// <summary>The gap between 1 and the next double: the unit of float64 rounding.</summary>
    const double MachineEpsilon = 2.220446049250313e-16;

    /// <summary>Pearson's r of two equally long series (null when either is constant or fewer than two points).</summary>
    public static double? Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException("series of different lengths");
        if (x.Count < 2) return null;
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Count; i++)
        {
            sxy += (x[i] - mx) * (y[i] - my);
            sxx += (x[i] - mx) * (x[i] - mx);
            syy += (y[i] - my) * (y[i] - my);
        }
        return sxx == 0 || syy == 0 ? null : sxy / Math.Sqrt(sxx * syy);
    }

    /// <summary>Pearson's r between layer quality and an adapter's per-layer redundancy, over the layers with more
    /// than one expert (as Appendix H correlates them); null when fewer than two layers have both.</summary>
    public static double? CorrelateWithRedundancy(LayerQualityReport quality, RedundancyReport redundancy)
    {
        var alpha = quality.Layers.ToDictionary(l => l.Layer, l => l.Alpha);
        var pairs = redundancy.Layers.Where(l => l.MeanPairwiseFrobenius is not null && alpha.ContainsKey(l.Layer))
            .Select(l => (Alpha: alpha[l.Layer], Redundancy: l.MeanPairwiseFrobenius!.Value)).ToList();
        return Pearson(pairs.Select(p => p.Alpha).ToList(), pairs.Select(p => p.Redundancy).ToList());
    }

    /// <summary>layer,module,alpha,xmin,tail_size,eigenvalues,ks_distance: one row per matrix, numbers round-tripping.</summary>
    public static void WriteCsv(string path, LayerQualityReport report)
    {
        var sb = new StringBuilder("layer,module,alpha,xmin,tail_size,eigenvalues,ks_distance\n");
        foreach (var q in report.Modules)
            sb.Append(CultureInfo.InvariantCulture, $"{q.Layer},{q.Module},{R(q.Fit.Alpha)},{R(q.Fit.Xmin)},{q.Fit.TailSize},{q.Fit.Eigenvalues},{R(q.Fit.KsDistance)}\n");
        File.WriteAllText(path, sb.ToString());
    }

    static string R(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}

/// <summary>Writes <c>layer_quality.csv</c>, <c>layer_quality.json</c> and <c>layer_quality.png</c>.</summary>
public static class LayerQualityFiles
{
    public const string CsvFile = "layer_quality.csv";
    public const string JsonFile = "layer_quality.json";
    public const string FigureFile = "layer_quality.png";

    public sealed record ModuleJson(int Layer, string Module, double Alpha, double Xmin, int TailSize, int Eigenvalues, double KsDistance);
    public sealed record LayerJson(int Layer, double Alpha);
    /// <summary>The layer_quality.json object; <c>redundancy_pearson</c> only with an adapter.</summary>
    public sealed record QualityJson(string BaseModel, string XminSearch, IReadOnlyList<ModuleJson> Modules, IReadOnlyList<LayerJson> Layers,
        string? Adapter, double? RedundancyPearson, IReadOnlyList<string> Figures);

    public static QualityJson Write(string outputDir, LayerQualityReport report, string? adapterDir = null, double? redundancyPearson = null)
    {
        Directory.CreateDirectory(outputDir);
        LayerQuality.WriteCsv(Path.Combine(outputDir, CsvFile), report);
        Figures.LayerQuality(report, Path.Combine(outputDir, FigureFile));
        var json = new QualityJson(report.BaseModel, report.Search.ToString().ToLowerInvariant(),
            report.Modules.Select(m => new ModuleJson(m.Layer, m.Module, m.Fit.Alpha, m.Fit.Xmin, m.Fit.TailSize, m.Fit.Eigenvalues, m.Fit.KsDistance)).ToList(),
            report.Layers.Select(l => new LayerJson(l.Layer, l.Alpha)).ToList(), adapterDir, redundancyPearson, [FigureFile]);
        File.WriteAllText(Path.Combine(outputDir, JsonFile), System.Text.Json.JsonSerializer.Serialize(json, AnalysisRunner.Json) + "\n");
        return json;
    }
}
