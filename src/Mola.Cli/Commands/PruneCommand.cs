using System.CommandLine;
using Mola.Adapters;

namespace Mola.Cli.Commands;

public static class PruneCommand
{
    public static Command Create()
    {
        var adapter = new Option<string>("--adapter") { Description = "MoLA adapter directory to prune (left unchanged): mola's, or one saved by the original MoLA code (with --top-k)", Required = true };
        var output = new Option<string>("--output") { Description = "Directory for the smaller adapter (must not hold an adapter yet)", Required = true };
        var keep = new Option<int?>("--keep-experts") { Description = "Prune until this many experts are left in all layers together" };
        var maxRedundancy = new Option<double?>("--max-redundancy") { Description = "Prune while a layer's closest pair of experts is at most this far apart (mean over modules of ||B_i A_i - B_j A_j||_F)" };
        var adapterTopK = Cli.AdapterTopKOption();
        var routing = new Option<string?>("--routing") { Description = "routing.csv of mola analyze: drop the expert of a pair the router selects less, instead of merging the two" };
        var json = Cli.JsonOption();
        var cmd = new Command("prune", "Remove experts where they are most redundant: repeatedly the closest pair of experts of any layer " +
            "(lower layers first on a tie) is merged into one (the best rank-r approximation of their mean update, the mean router row), " +
            "or with --routing the less used one is dropped. Writes a valid smaller adapter; top-k is lowered where it passes the experts left.")
        { adapter, adapterTopK, output, keep, maxRedundancy, routing, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string from = p.GetValue(adapter)!, to = Cli.NewAdapterDirectory(from, p.GetValue(output)!, "pruned");
            var config = AdapterConfig.Load(from, p.GetValue(adapterTopK));
            var selections = p.GetValue(routing) is string csv ? ExpertPruning.ReadSelections(csv, config.NumExperts) : null;
            var r = ExpertPruning.Prune(from, to, p.GetValue(keep), p.GetValue(maxRedundancy), selections, p.GetValue(adapterTopK));
            foreach (var s in r.Steps)
                o.Line($"layer {s.Layer,3}: {(s.Merged ? "merged" : "dropped")} expert {s.Removed} {(s.Merged ? "into" : "closest to")} expert {s.Kept} (distance {s.Distance:G6})");
            o.Line($"experts {ExpertAllocation.Describe(r.ExpertsBefore)} -> {ExpertAllocation.Describe(r.ExpertsAfter)} ({r.ExpertsBefore.Sum()} -> {r.ExpertsAfter.Sum()}); " +
                $"top-k {ExpertAllocation.Describe(r.TopKAfter)}; wrote {to}");
            return new
            {
                experts_before = r.ExpertsBefore,
                experts_after = r.ExpertsAfter,
                top_k = r.TopKAfter,
                steps = r.Steps.Select(s => new { layer = s.Layer, kept = s.Kept, removed = s.Removed, distance = s.Distance, merged = s.Merged }),
                output = to,
            };
        }));
        return cmd;
    }
}
