using Mola.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Analysis;

/// <summary>One expert of one module over a data set: how often the router picked it and with what
/// fusion weight. Frequency = selections / tokens (so a module's frequencies add up to top-k);
/// MeanWeight is the mean renormalised weight over the tokens that selected it (null if none did).</summary>
public sealed record RoutingRow(int Layer, string Module, int Expert, long Selections, long Tokens, double Frequency, double? MeanWeight);

/// <summary>An expert's selection frequency in one layer, pooled over the layer's modules
/// (selections over all modules / tokens over all modules).</summary>
public sealed record LayerRoutingRow(int Layer, int Expert, long Selections, long Tokens, double Frequency);

/// <summary>
/// Accumulates the router's top-k choices (the paper's figure 5). The MoLA layer calls <see cref="Add"/>
/// on every forward pass while an analysis hook is on; pass only the rows of real tokens (no padding).
/// </summary>
public sealed class RoutingStatistics : Mola.Adapters.IRoutingObserver
{
    sealed class Counts(int experts)
    {
        public readonly long[] Selections = new long[experts];
        public readonly double[] WeightSums = new double[experts];
        public long Tokens;
    }

    readonly Dictionary<(int Layer, string Module), Counts> _counts = [];

    /// <summary>Records one batch of routing decisions of layer <paramref name="layer"/>, module
    /// <paramref name="module"/>: <paramref name="topIndices"/> [N, k] int64 expert ids and
    /// <paramref name="topWeights"/> [N, k] their renormalised weights, for N tokens.</summary>
    public void Add(int layer, string module, Tensor topIndices, Tensor topWeights, int numExperts)
    {
        if (numExperts < 1) throw new ArgumentOutOfRangeException(nameof(numExperts), numExperts, "must be at least 1");
        if (topIndices.dim() != 2 || topIndices.dtype != ScalarType.Int64)
            throw new ArgumentException($"topIndices must be [N, k] int64, got {topIndices.dtype} [{string.Join(", ", topIndices.shape)}]", nameof(topIndices));
        if (!topWeights.shape.SequenceEqual(topIndices.shape))
            throw new ArgumentException($"topWeights [{string.Join(", ", topWeights.shape)}] must have the shape of topIndices [{string.Join(", ", topIndices.shape)}]", nameof(topWeights));
        if (!_counts.TryGetValue((layer, module), out var c))
            _counts[(layer, module)] = c = new Counts(numExperts);
        else if (c.Selections.Length != numExperts)
            throw new ArgumentException($"layer {layer} {module}: numExperts {numExperts} differs from the {c.Selections.Length} seen before", nameof(numExperts));

        // N x k is small (a batch's tokens times top-k): one copy to the CPU and a plain loop count exactly.
        long[] ids;
        double[] weights;
        using (NewDisposeScope())
        {
            ids = topIndices.detach().cpu().contiguous().data<long>().ToArray();
            weights = topWeights.detach().to(ScalarType.Float64, CPU).contiguous().data<double>().ToArray();
        }
        for (int n = 0; n < ids.Length; n++)
        {
            long e = ids[n];
            if (e < 0 || e >= numExperts)
                throw new ArgumentException($"layer {layer} {module}: expert index {e} is outside [0, {numExperts})", nameof(topIndices));
            c.Selections[e]++;
            c.WeightSums[e] += weights[n];
        }
        c.Tokens += topIndices.shape[0];
    }

    public bool IsEmpty => _counts.Count == 0;

    /// <summary>One row per (layer, module, expert), layers ascending, modules in the usual order.</summary>
    public IReadOnlyList<RoutingRow> Rows()
    {
        var rows = new List<RoutingRow>();
        foreach (var ((layer, module), c) in Ordered())
            for (int e = 0; e < c.Selections.Length; e++)
                rows.Add(new RoutingRow(layer, module, e, c.Selections[e], c.Tokens,
                    c.Tokens == 0 ? 0 : (double)c.Selections[e] / c.Tokens,
                    c.Selections[e] == 0 ? null : c.WeightSums[e] / c.Selections[e]));
        return rows;
    }

    /// <summary>One row per (layer, expert), pooled over the layer's modules.</summary>
    public IReadOnlyList<LayerRoutingRow> LayerRows()
    {
        var rows = new List<LayerRoutingRow>();
        foreach (var layer in Ordered().GroupBy(kv => kv.Key.Layer))
        {
            int experts = layer.Max(kv => kv.Value.Selections.Length);
            long tokens = layer.Sum(kv => kv.Value.Tokens);
            for (int e = 0; e < experts; e++)
            {
                long selections = layer.Sum(kv => e < kv.Value.Selections.Length ? kv.Value.Selections[e] : 0);
                rows.Add(new LayerRoutingRow(layer.Key, e, selections, tokens, tokens == 0 ? 0 : (double)selections / tokens));
            }
        }
        return rows;
    }

    IEnumerable<KeyValuePair<(int Layer, string Module), Counts>> Ordered() =>
        _counts.OrderBy(kv => kv.Key.Layer).ThenBy(kv => kv.Key.Module, Comparer<string>.Create(AdapterFile.CompareModules));
}
