using System.CommandLine;
using Mola.Adapters;

namespace Mola.Cli;

/// <summary>The options of <c>--experts auto</c> (layer-quality allocation), shared by train, params and allocate.</summary>
public sealed class AllocationOptions
{
    public const string ExpertsHelp = "; or auto:T, T experts split by the base model's layer quality (PL_Alpha_Hill, higher gets more), " +
        "or auto with --budget-params";

    public Option<double> Beta { get; } = new("--allocation-beta")
    {
        Description = "--experts auto: experts per layer in proportion to PL_Alpha_Hill^beta (0: uniform)",
        DefaultValueFactory = _ => AutoAllocation.DefaultBeta,
    };
    public Option<long?> Budget { get; } = new("--budget-params")
    {
        Description = "--experts auto: the largest total of experts whose exact trainable-parameter count fits this many",
    };
    public Option<string> XminSearch { get; } = new("--xmin-search")
    {
        Description = "--experts auto: tail starts the PL_Alpha_Hill fit tries: peak (near the spectrum's histogram peak) or all",
        DefaultValueFactory = _ => "peak",
    };

    public IEnumerable<Option> All => [Beta, Budget, XminSearch];

    /// <summary>The spec with these options' values.</summary>
    public AdapterSpec Apply(ParseResult p, AdapterSpec spec) => spec with
    {
        AllocationBeta = p.GetValue(Beta),
        BudgetParams = p.GetValue(Budget),
        XminSearch = p.GetValue(XminSearch)!,
    };
}
