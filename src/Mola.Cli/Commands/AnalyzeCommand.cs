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
        var adapter = new Option<string>("--adapter") { Description = "MoLA adapter directory (adapter_config.json, adapter_model.safetensors)" };
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
        var json = Cli.JsonOption();
        var cmd = new Command("analyze", "Expert redundancy of a MoLA adapter (mean pairwise ||B_i A_i - B_j A_j||_F per layer and module) " +
            "as CSV, JSON and PNG figures; with --base-model and --data also routing statistics (how often each expert is chosen " +
            "and with what weight); --compare draws several adapters' per-layer redundancy in one figure.")
        { adapter, compare, output, baseModel, data, template, dtype, device, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string? adapterDir = p.GetValue(adapter);
            var compareDirs = p.GetValue(compare) ?? [];
            string outputDir = Cli.OutputDirectory(p.GetValue(output)!, "--output");
            if ((adapterDir is null) == (compareDirs.Length == 0))
                throw new MolaException("give either --adapter DIR or --compare DIR1 DIR2 ...");
            if (adapterDir is null)
                return Compare(o, compareDirs, outputDir);

            string? baseDir = p.GetValue(baseModel), dataPath = p.GetValue(data);
            if ((baseDir is null) != (dataPath is null))
                throw new MolaException("routing statistics need both --base-model and --data");
            Func<RoutingStatistics>? routing = baseDir is null ? null : () =>
            {
                var texts = RoutingRun.ReadTexts(dataPath!, PromptTemplate.Load(p.GetValue(template)!));
                using var model = ModelLoader.Load(baseDir, Cli.DType(p, dtype), Cli.Device(p, device), o.Line);
                var adapterModel = AdapterModel.Load(model, adapterDir);
                var tok = MolaTokenizer.Load(baseDir, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
                return new ProgressReporter(o).Run("routing", texts.Count, report => RoutingRun.Collect(adapterModel, tok, texts, n => report(n, "texts")));
            };
            var r = AnalysisRunner.Run(adapterDir, outputDir, routing);
            foreach (var l in r.Redundancy.Layers)
                o.Line($"layer {l.Layer,3}  experts {l.Experts,2}  mean pairwise distance {(l.MeanPairwiseFrobenius is { } v ? v.ToString("F6") : "- (one expert)")}");
            o.Line($"wrote redundancy.csv, {(r.Routing is null ? "" : "routing.csv, ")}analysis.json, {string.Join(", ", r.Figures)} to {outputDir}");
            // The --json object is analysis.json's, with the figures as paths a caller can open.
            return AnalysisRunner.ToJson(r) with { Figures = r.Figures.Select(f => Path.Combine(outputDir, f)).ToList() };
        }));
        return cmd;
    }

    static object Compare(Output o, string[] dirs, string outputDir)
    {
        if (dirs.Length < 2) throw new MolaException("--compare needs at least two adapter directories");
        var r = AnalysisRunner.Compare(dirs, outputDir);
        for (int i = 0; i < r.Labels.Count; i++)
            o.Line($"{r.Labels[i]}: " + string.Join("  ", r.Reports[i].Layers.Select(l => $"L{l.Layer} {(l.MeanPairwiseFrobenius is { } v ? v.ToString("F4") : "-")}")));
        o.Line($"wrote redundancy.csv, analysis.json, {string.Join(", ", r.Figures)} to {outputDir}");
        return AnalysisRunner.ToJson(r) with { Figures = r.Figures.Select(f => Path.Combine(outputDir, f)).ToList() };
    }
}
