using System.CommandLine;
using Mola.Analysis;

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
        var json = Cli.JsonOption();
        var cmd = new Command("analyze", "Expert redundancy of a MoLA adapter (mean pairwise ||B_i A_i - B_j A_j||_F per layer and module) " +
            "as CSV, JSON and PNG figures; --compare draws several adapters' per-layer redundancy in one figure.")
        { adapter, compare, output, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string? adapterDir = p.GetValue(adapter);
            var compareDirs = p.GetValue(compare) ?? [];
            string outputDir = p.GetValue(output)!;
            if ((adapterDir is null) == (compareDirs.Length == 0))
                throw new MolaException("give either --adapter DIR or --compare DIR1 DIR2 ...");
            if (adapterDir is null)
                return Compare(o, compareDirs, outputDir);

            // SEAM (routing): with --base-model and --data, pass a Func<RoutingStatistics> that loads the
            // model with this adapter, turns the MoLA layer's routing hook on and runs the data through it.
            var r = AnalysisRunner.Run(adapterDir, outputDir, routing: null);
            foreach (var l in r.Redundancy.Layers)
                o.Line($"layer {l.Layer,3}  experts {l.Experts,2}  mean pairwise distance {(l.MeanPairwiseFrobenius is { } v ? v.ToString("F6") : "- (one expert)")}");
            o.Line($"wrote redundancy.csv, analysis.json, {string.Join(", ", r.Figures)} to {outputDir}");
            return new { output = outputDir, analysis = AnalysisRunner.ToJson(r) };
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
        return new { output = outputDir, analysis = AnalysisRunner.ToJson(r) };
    }
}
