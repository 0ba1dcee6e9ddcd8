using System.CommandLine;
using Mola.Adapters;
using Mola.Analysis;
using Mola.Models;

namespace Mola.Cli.Commands;

/// <summary><c>mola allocate</c>: the automatic allocation alone, to read before training or to pass on as a list.</summary>
public static class AllocateCommand
{
    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption();
        baseModel.Description = "Base model directory: its weights' layer quality decides the split";
        var experts = new Option<string>("--experts")
        {
            Description = "auto:T (T experts in all) or auto (the most that --budget-params allows)",
            DefaultValueFactory = _ => "auto",
        };
        var rank = new Option<string>("--rank") { Description = "LoRA rank per layer, for the parameter count", DefaultValueFactory = _ => AdapterSpec.Paper.Rank };
        var targets = new Option<string>("--targets") { Description = "Modules to adapt (and to measure), comma separated, or all", DefaultValueFactory = _ => AdapterSpec.Paper.Targets };
        var allocation = new AllocationOptions();
        var json = Cli.JsonOption();
        var cmd = new Command("allocate", "Experts per layer from the base model's layer quality (AlphaLoRA's rule on MoLA): n_l = T alpha_l^beta / " +
            "sum_j alpha_j^beta, rounded to add up to T with at least one expert a layer, top-k 2 where n_l > 1; with --budget-params the largest T " +
            "that fits. Prints the allocation, its exact parameter count and a --experts list for train.")
        { baseModel, experts, rank, targets, json };
        foreach (var opt in allocation.All) cmd.Options.Add(opt);
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string dir = p.GetValue(baseModel)!;
            var spec = allocation.Apply(p, AdapterSpec.Paper with { Experts = p.GetValue(experts), Rank = p.GetValue(rank)!, Targets = p.GetValue(targets)! });
            spec.Validate();
            if (!AutoAllocation.TryParse(spec.Experts!, "--experts", out int? total))
                throw new MolaException($"--experts {spec.Experts}: mola allocate derives the allocation (expected auto:T, or auto with --budget-params)");
            var config = ModelConfig.Load(dir);
            var ranks = ExpertAllocation.Parse(spec.Rank, config.NumHiddenLayers, "--rank");
            var targetList = TargetModules.Parse(spec.Targets);
            var search = XminSearchOption.Parse(spec.XminSearch, "--xmin-search");
            var r = new ProgressReporter(o).Run("layer quality", config.NumHiddenLayers * targetList.Length, report =>
                AutoAllocation.Derive(dir, total, spec.BudgetParams, spec.AllocationBeta, search, ranks, targetList, (done, _, name) => report(done, name)));
            for (int l = 0; l < r.Experts.Length; l++)
                o.Line($"layer {l,3}  PL_Alpha_Hill {r.LayerAlpha[l]:F4}  experts {r.Experts[l],2}  top-k {r.TopK[l]}");
            o.Line(r.Describe());
            o.Line($"for train: --experts {string.Join(",", r.Experts)} --top-k {string.Join(",", r.TopK)}");
            return new
            {
                experts = r.Experts,
                top_k = r.TopK,
                total_experts = r.TotalExperts,
                trainable_parameters = r.TrainableParameters,
                allocation = r.ToJson(),
            };
        }));
        return cmd;
    }
}
