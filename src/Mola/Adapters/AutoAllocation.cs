using System.Globalization;
using System.Text.Json.Nodes;
using Mola.Analysis;
using Mola.Models;

namespace Mola.Adapters;

/// <summary>An allocation derived from layer quality, and how: what <c>adapter_config.json</c> records under
/// <c>"allocation"</c>.</summary>
public sealed record AutoAllocationResult(int TotalExperts, double Beta, XminSearch Search, IReadOnlyList<double> LayerAlpha,
    int[] Experts, int[] TopK, long TrainableParameters, long? BudgetParams)
{
    public JsonObject ToJson() => new()
    {
        ["method"] = "pl_alpha_hill",
        ["total_experts"] = TotalExperts,
        ["beta"] = Beta,
        ["xmin_search"] = Search.ToString().ToLowerInvariant(),
        ["layer_alpha"] = new JsonArray(LayerAlpha.Select(a => (JsonNode)a!).ToArray()),
        ["budget_params"] = BudgetParams,
        ["trainable_parameters"] = TrainableParameters,
    };

    /// <summary>One line for the console: the allocation, its total and parameter count, and where it came from.</summary>
    public string Describe() =>
        $"auto allocation {ExpertAllocation.Describe(Experts)} ({TotalExperts} experts, top-k {ExpertAllocation.Describe(TopK)}, " +
        $"{TrainableParameters.ToString("N0", CultureInfo.InvariantCulture)} trainable parameters" +
        (BudgetParams is long b ? $" within a budget of {b.ToString("N0", CultureInfo.InvariantCulture)}" : "") +
        $") from PL_Alpha_Hill ({Search.ToString().ToLowerInvariant()} x_min search), beta {Beta.ToString(CultureInfo.InvariantCulture)}";
}

/// <summary>
/// Training-free allocation under a budget (AlphaLoRA, applied to MoLA's experts): layers whose weights are less well
/// trained (higher PL_Alpha_Hill, <see cref="LayerQuality"/>) get more experts,
/// <c>n_l = T alpha_l^beta / sum_j alpha_j^beta</c>, rounded so that the counts add up to exactly T and every layer
/// keeps at least one expert; top-k is 2 where a layer has more than one expert, else 1.
/// </summary>
public static class AutoAllocation
{
    public const double DefaultBeta = 2.5;

    /// <summary>Reads <c>auto:T</c> (T experts in all) or <c>auto</c> (T from a parameter budget); false for any other spec.</summary>
    public static bool TryParse(string spec, string what, out int? total)
    {
        total = null;
        string s = (spec ?? "").Trim().ToLowerInvariant();
        if (s == "auto") return true;
        if (!s.StartsWith("auto:", StringComparison.Ordinal)) return false;
        string t = s["auto:".Length..].Trim();
        if (!t.All(char.IsAsciiDigit) || !int.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out int v) || v < 1)
            throw new MolaException(n => $"{n(what)} {spec}: \"{t}\" is not a positive total of experts (expected auto:T, e.g. auto:160)");
        total = v;
        return true;
    }

    /// <summary>
    /// Splits <paramref name="total"/> experts over the layers in proportion to <c>alpha_l^beta</c>: each layer first
    /// gets the floor of its share, at least 1; then while the sum is short, one more goes to the layer whose share
    /// exceeds its count the most, and while it is over (the minimum of 1 can push it over), one less to a layer of
    /// more than one expert whose count exceeds its share the most (the lower layer first on ties, both ways).
    /// </summary>
    public static int[] Allocate(IReadOnlyList<double> alpha, int total, double beta)
    {
        int layers = alpha.Count;
        if (layers == 0) throw new ArgumentException("no layers", nameof(alpha));
        if (total < layers)
            throw new MolaException($"auto:{total}: {total} experts for {layers} layers (every layer needs at least one; give auto:{layers} or more)");
        var weight = alpha.Select(a => Math.Pow(a, beta)).ToArray();
        double sum = weight.Sum();
        if (!double.IsFinite(sum) || sum <= 0 || weight.Any(w => !double.IsFinite(w) || w < 0))
            throw new MolaException($"layer quality gives no finite positive weights alpha^{beta.ToString(CultureInfo.InvariantCulture)} to split experts by");
        var share = weight.Select(w => total * w / sum).ToArray();
        var n = share.Select(x => Math.Max(1, (int)Math.Floor(x))).ToArray();
        while (n.Sum() < total)
            n[ArgBest(l => share[l] - n[l], l => true)]++;
        while (n.Sum() > total)
            n[ArgBest(l => n[l] - share[l], l => n[l] > 1)]--;
        return n;

        int ArgBest(Func<int, double> score, Func<int, bool> allowed)
        {
            int best = -1;
            for (int l = 0; l < layers; l++)
                if (allowed(l) && (best < 0 || score(l) > score(best))) best = l;
            return best;
        }
    }

    /// <summary>Top-k 2 where a layer has more than one expert, else 1.</summary>
    public static int[] TopKFor(int[] experts) => experts.Select(n => n > 1 ? 2 : 1).ToArray();

    /// <summary>
    /// The largest total T whose allocation's exact trainable-parameter count (<paramref name="count"/>, the planner's)
    /// is at most <paramref name="budget"/>. Every T from one expert a layer up to the budget over the cheapest
    /// expert is tried: with ranks that differ per layer a larger T can cost less than a smaller one (its experts
    /// shift to cheaper layers), so the search does not stop at the first T over the budget.
    /// </summary>
    public static int LargestTotalWithin(long budget, int layers, long cheapestExpert, Func<int, long> count)
    {
        long floor = count(layers);
        if (floor > budget)
            throw new MolaException(n => $"{n("budget_params")} {budget}: even one expert a layer needs {floor.ToString("N0", CultureInfo.InvariantCulture)} trainable parameters");
        // sum_l n_l c_l >= T min_l c_l, so no T past budget / min c fits.
        long upper = Math.Min(budget / Math.Max(1, cheapestExpert), (long)layers * ExpertAllocation.MaxBareExperts);
        int best = layers;
        for (int t = layers + 1; t <= upper; t++)
            if (count(t) <= budget) best = t;
        return best;
    }

    /// <summary>Builds the allocation for a model directory: layer quality of its <paramref name="targets"/>, then
    /// the split of <paramref name="total"/> experts, or of the largest total within <paramref name="budget"/>.</summary>
    public static AutoAllocationResult Derive(string baseModel, int? total, long? budget, double beta, XminSearch search,
        int[] rank, string[] targets, Action<int, int, string>? progress = null)
    {
        if ((total is null) == (budget is null))
            throw new MolaException(n => total is null
                ? $"{n("num_experts")} auto needs {n("budget_params")} N (or give the total: auto:T)"
                : $"{n("num_experts")} auto:T and {n("budget_params")} both fix the total; give one (auto with {n("budget_params")}, or auto:T)");
        var config = ModelConfig.Load(baseModel);
        var quality = LayerQuality.Compute(baseModel, targets, search, progress);
        var alpha = quality.Alphas;
        long Count(int t)
        {
            var e = Allocate(alpha, t, beta);
            return ParameterCount.Mola(config, e, TopKFor(e), rank, targets).Total;
        }
        int layers = config.NumHiddenLayers;
        long cheapest = Enumerable.Range(0, layers).Min(l => targets.Sum(m =>
        {
            var (i, o) = TargetModules.Shape(config, m);
            return (long)rank[l] * (i + o) + i;   // A, B and a router row
        }));
        int t = total ?? LargestTotalWithin(budget!.Value, layers, cheapest, Count);
        var experts = Allocate(alpha, t, beta);
        return new AutoAllocationResult(t, beta, search, alpha, experts, TopKFor(experts), Count(t), budget);
    }
}
