using System.CommandLine;
using Mola.Adapters;
using Mola.Analysis;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;

namespace Mola.Cli.Commands;

public static class AnalyzeCommand
{
    public static Command Create()
    {
        var adapter = new Option<string>("--adapter") { Description = "MoLA adapter directory: mola's (adapter_config.json, adapter_model.safetensors) or one saved by the original MoLA code (with --top-k)" };
        var adapterTopK = Cli.AdapterTopKOption("; with --compare, it applies to those that record none");
        var compare = new Option<string[]>("--compare")
        {
            Description = "Two or more adapter directories whose per-layer redundancy is drawn side by side",
            AllowMultipleArgumentsPerToken = true,
        };
        var output = new Option<string>("--output") { Description = "Directory for redundancy.csv, routing.csv, analysis.json and the PNG figures", Required = true };
        var baseModel = Cli.BaseModelOption(required: false);
        baseModel.Description = "Base model directory: with --data, also collect routing statistics (expert selection frequency and mean fusion weight)";
        var data = new Option<string?>("--data") { Description = "JSONL of {\"text\": ...} or instruction records to route through the adapter (with --base-model)" };
        var template = new Option<string>("--template") { Description = "Template for instruction records in --data: alpaca or a JSON file", DefaultValueFactory = _ => "alpaca" };
        var dtype = Cli.DTypeOption();
        var device = Cli.DeviceOption();
        var layerQuality = new Option<bool>("--layer-quality")
        {
            Description = "Layer quality of --base-model: PL_Alpha_Hill of every targeted weight's W^T W spectrum (one float64 eigendecomposition of the smaller Gram matrix a matrix, " +
                "streamed, with progress), per layer the mean over modules; with --adapter also its Pearson correlation with the adapter's per-layer redundancy",
        };
        var xminSearch = new Option<string>("--xmin-search")
        {
            Description = "Tail starts the power-law fit tries: peak (near the spectrum's histogram peak, as AlphaLoRA) or all (every eigenvalue, as Clauset-Shalizi-Newman)",
            DefaultValueFactory = _ => "peak",
        };
        var targets = new Option<string>("--targets") { Description = "Modules whose weights --layer-quality reads, comma separated, or all", DefaultValueFactory = _ => AdapterSpec.Paper.Targets };
        var json = Cli.JsonOption();
        var cmd = new Command("analyze", "Expert redundancy of a MoLA adapter (mean pairwise ||B_i A_i - B_j A_j||_F per layer and module) " +
            "as CSV, JSON and PNG figures; with --base-model and --data also routing statistics (how often each expert is chosen " +
            "and with what weight); --compare draws several adapters' per-layer redundancy in one figure; --layer-quality the base " +
            "model's PL_Alpha_Hill per layer.")
        { adapter, adapterTopK, compare, output, baseModel, data, template, dtype, device, layerQuality, xminSearch, targets, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string? adapterDir = p.GetValue(adapter);
            var compareDirs = p.GetValue(compare) ?? [];
            string outputDir = Cli.OutputDirectory(p.GetValue(output)!, "--output");
            string? baseDir = p.GetValue(baseModel), dataPath = p.GetValue(data);
            // Layer quality is the slow part (one eigendecomposition a matrix): every option is checked first, and with --adapter the
            // adapter is analysed before it, so a bad adapter fails at once.
            Func<LayerQualityReport>? quality = null;
            if (p.GetValue(layerQuality))
            {
                if (compareDirs.Length > 0) throw new MolaException("--layer-quality takes one --adapter, not --compare");
                if (baseDir is null) throw new MolaException("--layer-quality needs --base-model DIR (the weights whose spectra it measures)");
                var search = XminSearchOption.Parse(p.GetValue(xminSearch)!, "--xmin-search");
                var targetList = TargetModules.Parse(p.GetValue(targets)!);
                quality = () => LayerQualityRun(o, baseDir, targetList, search);
                if (adapterDir is null)
                    return WriteQuality(o, outputDir, quality(), null, null);
            }
            if ((adapterDir is null) == (compareDirs.Length == 0))
                throw new MolaException("give either --adapter DIR or --compare DIR1 DIR2 ... (or --layer-quality with --base-model)");
            if (adapterDir is null)
                return Compare(o, compareDirs, outputDir, p.GetValue(adapterTopK));

            if (quality is null ? (baseDir is null) != (dataPath is null) : dataPath is not null && baseDir is null)
                throw new MolaException("routing statistics need both --base-model and --data");
            Func<RoutingStatistics>? routing = dataPath is null ? null : () =>
            {
                var texts = RoutingRun.ReadTexts(dataPath!, PromptTemplate.Load(p.GetValue(template)!));
                using var model = ModelLoader.Load(baseDir!, Cli.DType(p, dtype), Cli.Device(p, device), o.Line);
                var adapterModel = AdapterModel.Load(model, adapterDir, p.GetValue(adapterTopK));
                var tok = MolaTokenizer.Load(baseDir!, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
                return new ProgressReporter(o).Run("routing", texts.Count, report => RoutingRun.Collect(adapterModel, tok, texts, n => report(n, "texts")));
            };
            var r = AnalysisRunner.Run(adapterDir, outputDir, routing, p.GetValue(adapterTopK));
            foreach (var l in r.Redundancy.Layers)
                o.Line($"layer {l.Layer,3}  experts {l.Experts,2}  mean pairwise distance {(l.MeanPairwiseFrobenius is { } v ? v.ToString("F6") : "- (one expert)")}");
            o.Line($"wrote redundancy.csv, {(r.Routing is null ? "" : "routing.csv, ")}analysis.json, {string.Join(", ", r.Figures)} to {outputDir}");
            // The --json object is analysis.json's, with the figures as paths a caller can open.
            var analysis = AnalysisRunner.ToJson(r) with { Figures = r.Figures.Select(f => Path.Combine(outputDir, f)).ToList() };
            if (quality is null) return analysis;
            var q = quality();
            double? pearson = LayerQuality.CorrelateWithRedundancy(q, r.Redundancy);
            o.Line($"Pearson r between layer PL_Alpha_Hill and the adapter's per-layer redundancy: {(pearson is { } rho ? rho.ToString("F4") : "- (fewer than two layers with several experts)")}");
            return new { analysis, layer_quality = WriteQuality(o, outputDir, q, adapterDir, pearson) };
        }));
        return cmd;
    }

    static LayerQualityReport LayerQualityRun(Output o, string baseDir, string[] targets, XminSearch search)
    {
        var config = ModelConfig.Load(baseDir);
        int total = config.NumHiddenLayers * targets.Length;
        return new ProgressReporter(o).Run("layer quality", total,
            report => LayerQuality.Compute(baseDir, targets, search, (done, _, name) => report(done, name)));
    }

    static LayerQualityFiles.QualityJson WriteQuality(Output o, string outputDir, LayerQualityReport q, string? adapterDir, double? pearson)
    {
        foreach (var l in q.Layers)
            o.Line($"layer {l.Layer,3}  PL_Alpha_Hill {l.Alpha:F4}  ({string.Join(" ", q.Modules.Where(m => m.Layer == l.Layer).Select(m => $"{m.Module} {m.Fit.Alpha:F2}"))})");
        var json = LayerQualityFiles.Write(outputDir, q, adapterDir, pearson);
        o.Line($"wrote {LayerQualityFiles.CsvFile}, {LayerQualityFiles.JsonFile}, {LayerQualityFiles.FigureFile} to {outputDir}");
        return json with { Figures = json.Figures.Select(f => Path.Combine(outputDir, f)).ToList() };
    }

    static object Compare(Output o, string[] dirs, string outputDir, string? topK)
    {
        if (dirs.Length < 2) throw new MolaException("--compare needs at least two adapter directories");
        var r = AnalysisRunner.Compare(dirs, outputDir, topK);
        for (int i = 0; i < r.Labels.Count; i++)
            o.Line($"{r.Labels[i]}: " + string.Join("  ", r.Reports[i].Layers.Select(l => $"L{l.Layer} {(l.MeanPairwiseFrobenius is { } v ? v.ToString("F4") : "-")}")));
        o.Line($"wrote redundancy.csv, analysis.json, {string.Join(", ", r.Figures)} to {outputDir}");
        return AnalysisRunner.ToJson(r) with { Figures = r.Figures.Select(f => Path.Combine(outputDir, f)).ToList() };
    }
}
