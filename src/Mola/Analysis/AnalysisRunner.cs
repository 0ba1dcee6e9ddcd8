using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Mola.Analysis;

/// <summary>What one analysis produced; <see cref="Figures"/> are file names inside the output directory.</summary>
public sealed record AnalysisResult(RedundancyReport Redundancy, RoutingStatistics? Routing, IReadOnlyList<string> Figures);

/// <summary>What a comparison of adapters produced; labels name the adapters in the CSV and the legend.</summary>
public sealed record ComparisonResult(IReadOnlyList<string> Labels, IReadOnlyList<RedundancyReport> Reports, IReadOnlyList<string> Figures);

/// <summary>
/// Runs an analysis and writes its files: <c>redundancy.csv</c>, <c>routing.csv</c> (when routing
/// statistics were gathered), <c>analysis.json</c> and the PNG figures.
/// </summary>
public static class AnalysisRunner
{
    public const string HeatmapFile = "redundancy_heatmap.png";
    public const string ByLayerFile = "redundancy_by_layer.png";
    public const string RoutingFile = "routing_frequency.png";
    public const string CompareFile = "compare_redundancy.png";

    internal static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = true,
    };

    /// <summary>Redundancy of <paramref name="adapterDir"/>, and routing statistics when
    /// <paramref name="routing"/> is given (it runs the model over a data set with the routing hook on).</summary>
    public static AnalysisResult Run(string adapterDir, string outputDir, Func<RoutingStatistics>? routing = null, string? topK = null)
    {
        var redundancy = Redundancy.Compute(adapterDir, topK);
        var stats = routing?.Invoke();
        Directory.CreateDirectory(outputDir);
        var figures = new List<string> { HeatmapFile, ByLayerFile };
        Figures.RedundancyHeatmap(redundancy, Path.Combine(outputDir, HeatmapFile));
        Figures.RedundancyByLayer(redundancy, Path.Combine(outputDir, ByLayerFile));
        WriteRedundancyCsv(Path.Combine(outputDir, "redundancy.csv"), [(null, redundancy)]);
        if (stats is not null)
        {
            WriteRoutingCsv(Path.Combine(outputDir, "routing.csv"), stats);
            if (!stats.IsEmpty)
            {
                Figures.RoutingFrequency(stats, Path.Combine(outputDir, RoutingFile));
                figures.Add(RoutingFile);
            }
        }
        var result = new AnalysisResult(redundancy, stats, figures);
        File.WriteAllText(Path.Combine(outputDir, "analysis.json"), JsonSerializer.Serialize(ToJson(result), Json) + "\n");
        return result;
    }

    /// <summary>Per-layer redundancy of several adapters in one figure and one CSV (with an adapter column).</summary>
    public static ComparisonResult Compare(IReadOnlyList<string> adapterDirs, string outputDir, string? topK = null)
    {
        if (adapterDirs.Count == 0) throw new MolaException(n => $"{n("compare")} needs at least one adapter directory");
        var reports = adapterDirs.Select(d => Redundancy.Compute(d, topK, topKWhereMissing: true)).ToList();
        var labels = Labels(adapterDirs);
        Directory.CreateDirectory(outputDir);
        Figures.CompareRedundancy(reports, labels, Path.Combine(outputDir, CompareFile));
        WriteRedundancyCsv(Path.Combine(outputDir, "redundancy.csv"), labels.Zip(reports, (l, r) => ((string?)l, r)).ToList());
        var result = new ComparisonResult(labels, reports, [CompareFile]);
        File.WriteAllText(Path.Combine(outputDir, "analysis.json"), JsonSerializer.Serialize(ToJson(result), Json) + "\n");
        return result;
    }

    /// <summary>The analysis.json object: {"redundancy": [...], "redundancy_by_layer": [...], "routing": [...], "figures": [...]}.</summary>
    public static AnalysisJson ToJson(AnalysisResult r) => new(
        r.Redundancy.Modules.Select(m => new RedundancyJson(m.Layer, m.Module, m.Experts, m.MeanPairwiseFrobenius)).ToList(),
        r.Redundancy.Layers.Select(l => new LayerRedundancyJson(l.Layer, l.Experts, l.MeanPairwiseFrobenius)).ToList(),
        r.Routing?.Rows().Select(x => new RoutingJson(x.Layer, x.Module, x.Expert, x.Selections, x.Tokens, x.Frequency, x.MeanWeight)).ToList() ?? [],
        r.Figures);

    /// <summary>The analysis.json object of a comparison: one entry per adapter.</summary>
    public static ComparisonJson ToJson(ComparisonResult r) => new(
        r.Labels.Zip(r.Reports, (label, rep) => new AdapterJson(label, rep.AdapterDir,
            rep.Modules.Select(m => new RedundancyJson(m.Layer, m.Module, m.Experts, m.MeanPairwiseFrobenius)).ToList(),
            rep.Layers.Select(l => new LayerRedundancyJson(l.Layer, l.Experts, l.MeanPairwiseFrobenius)).ToList())).ToList(),
        r.Figures);

    public sealed record RedundancyJson(int Layer, string Module, int Experts, double? MeanPairwiseFrobenius);
    public sealed record LayerRedundancyJson(int Layer, int Experts, double? MeanPairwiseFrobenius);
    public sealed record RoutingJson(int Layer, string Module, int Expert, long Selections, long Tokens, double Frequency, double? MeanWeight);
    public sealed record AnalysisJson(IReadOnlyList<RedundancyJson> Redundancy, IReadOnlyList<LayerRedundancyJson> RedundancyByLayer,
        IReadOnlyList<RoutingJson> Routing, IReadOnlyList<string> Figures);
    public sealed record AdapterJson(string Label, string Adapter, IReadOnlyList<RedundancyJson> Redundancy, IReadOnlyList<LayerRedundancyJson> RedundancyByLayer);
    public sealed record ComparisonJson(IReadOnlyList<AdapterJson> Adapters, IReadOnlyList<string> Figures);

    /// <summary>layer,module,experts,mean_pairwise_frobenius (an adapter column first when comparing);
    /// the value is empty where a layer has a single expert.</summary>
    public static void WriteRedundancyCsv(string path, IReadOnlyList<(string? Label, RedundancyReport Report)> reports)
    {
        bool compare = reports.Any(r => r.Label is not null);
        var sb = new StringBuilder();
        sb.Append(compare ? "adapter," : "").Append("layer,module,experts,mean_pairwise_frobenius\n");
        foreach (var (label, report) in reports)
            foreach (var m in report.Modules)
                sb.Append(compare ? Csv(label!) + "," : "")
                  .Append(CultureInfo.InvariantCulture, $"{m.Layer},{Csv(m.Module)},{m.Experts},{Number(m.MeanPairwiseFrobenius)}\n");
        File.WriteAllText(path, sb.ToString());
    }

    /// <summary>layer,module,expert,selections,tokens,frequency,mean_weight (mean_weight empty for an expert never selected).</summary>
    public static void WriteRoutingCsv(string path, RoutingStatistics stats)
    {
        var sb = new StringBuilder("layer,module,expert,selections,tokens,frequency,mean_weight\n");
        foreach (var r in stats.Rows())
            sb.Append(CultureInfo.InvariantCulture, $"{r.Layer},{Csv(r.Module)},{r.Expert},{r.Selections},{r.Tokens},{Number(r.Frequency)},{Number(r.MeanWeight)}\n");
        File.WriteAllText(path, sb.ToString());
    }

    // "R" round-trips the double exactly, so the CSV can be checked against the JSON.
    static string Number(double? x) => x is { } v ? v.ToString("R", CultureInfo.InvariantCulture) : "";

    static string Csv(string s) => s.IndexOfAny([',', '"', '\n']) < 0 ? s : "\"" + s.Replace("\"", "\"\"") + "\"";

    /// <summary>Short names for the legend: the directory's own name, or the path as given when two share a name.</summary>
    static List<string> Labels(IReadOnlyList<string> dirs)
    {
        var names = dirs.Select(d => Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(d)))).ToList();
        return names.Select((n, i) => names.Count(x => x == n) > 1 ? dirs[i] : n).ToList();
    }
}
