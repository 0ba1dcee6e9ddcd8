using System.Globalization;

namespace Mola.Adapters;

/// <summary>
/// Per-layer allocation specs, one parser for experts, top-k and rank. A spec is
/// <list type="bullet">
/// <item>one value for every layer: <c>8</c>, <c>16</c>;</item>
/// <item>a comma list with one value per layer, or a group pattern of fewer values: the layers are split into
/// that many contiguous groups of near-equal size (<see cref="GroupSizes"/>) and each group repeats its value:
/// <c>2,4,6,8</c> on 32 layers is 8 layers of 2, then 8 of 4, ...; on 22 layers 6, 5, 5 and 6 layers;</item>
/// <item>compact digits, four or more of them without commas: <c>2468</c> is <c>2,4,6,8</c>
/// (shorter digit strings are one value, so <c>--rank 16</c> means 16);</item>
/// <item>a named preset: <c>square:N</c>, <c>inverted-triangle</c> (2468), <c>triangle</c> (8642),
/// <c>hourglass</c> (8228), <c>diamond</c> (2882), the paper's shapes.</item>
/// </list>
/// Parsing needs only the layer count, so a bad spec fails before any weight is loaded.
/// </summary>
public static class ExpertAllocation
{
    /// <summary>The paper's shapes as four groups of layers (MoLA-▽, MoLA-△, MoLA-⋈, and the NAACL version's
    /// MoLA-◇).</summary>
    public static readonly IReadOnlyDictionary<string, int[]> Presets = new Dictionary<string, int[]>
    {
        ["inverted-triangle"] = [2, 4, 6, 8],
        ["triangle"] = [8, 6, 4, 2],
        ["hourglass"] = [8, 2, 2, 8],
        ["diamond"] = [2, 8, 8, 2],
    };

    // Shorter digit strings read as one number: "16" is a rank people type, "1,6" a pattern nobody writes compactly.
    const int MinCompactDigits = 4;

    /// <summary>Reads a spec into one value per layer.</summary>
    /// <param name="what">The setting the spec came from (e.g. <c>num_experts</c>), named in error messages through
    /// <see cref="MolaException.Render"/> (the CLI writes its option).</param>
    public static int[] Parse(string spec, int numLayers, string what)
    {
        if (numLayers <= 0)
            throw new ArgumentOutOfRangeException(nameof(numLayers), numLayers, "the layer count must be positive");
        string s = (spec ?? "").Trim();
        if (s.Length == 0)
            throw new MolaException(n => $"{n(what)}: empty spec (expected a value such as 8, a list such as 2,4,6,8 or 2468, or a preset: {PresetNames})");

        string lower = s.ToLowerInvariant();
        if (lower == "square" || lower.StartsWith("square:", StringComparison.Ordinal))
            return Square(s, lower, numLayers, what);
        if (Presets.TryGetValue(lower, out var shape))
        {
            if (numLayers < shape.Length)
                throw new MolaException(n => $"{n(what)} {s}: the preset has {shape.Length} groups of layers, the model only {Layers(numLayers)} (give one value per layer instead)");
            return Expand(shape, numLayers);
        }

        int[] values;
        if (s.Contains(','))
            values = s.Split(',').Select(part => Value(part.Trim(), s, what)).ToArray();
        else if (s.All(char.IsAsciiDigit) && s.Length >= MinCompactDigits)
            values = s.Select(c => Value(c.ToString(), s, what)).ToArray();
        else
            values = [Value(s, s, what)];

        if (values.Length > numLayers)
            throw new MolaException(n => $"{n(what)} {s}: {values.Length} values, but the model has {Layers(numLayers)} " +
                $"(give one value, one per layer ({numLayers}), or a group pattern of at most {numLayers} values)");
        return Expand(values, numLayers);
    }

    /// <summary>The largest expert count a bare number may give (the paper uses up to 8 per layer).</summary>
    public const int MaxBareExperts = 64;

    /// <summary>Experts per layer: <see cref="Parse"/>, except that a bare number above <see cref="MaxBareExperts"/>
    /// is refused as almost surely a short digit pattern (<c>246</c> typed for 2, 4, 6 would silently give every layer
    /// 246 experts and billions of parameters). <c>square:N</c> still gives any count on purpose.</summary>
    public static int[] ParseExperts(string spec, int numLayers, string what)
    {
        var values = Parse(spec, numLayers, what);
        string s = spec.Trim();
        if (s.All(char.IsAsciiDigit) && s.Length < MinCompactDigits && values[0] > MaxBareExperts)
            throw new MolaException(n => $"{n(what)} {s}: {values[0]} experts in every layer? For one count per group of layers write " +
                $"{string.Join(",", s.ToCharArray())} (digits run together need at least {MinCompactDigits}, as in 2468); for {s} experts write square:{s}");
        return values;
    }

    static string Layers(int n) => n == 1 ? "1 layer" : $"{n} layers";

    /// <summary>Checks that the three allocations fit together, layer by layer.</summary>
    public static void Validate(int[] experts, int[] topK, int[] rank)
    {
        if (experts.Length != topK.Length || experts.Length != rank.Length)
            throw new MolaException($"allocation lengths differ: {experts.Length} expert counts, {topK.Length} top-k values, {rank.Length} ranks (one per layer each)");
        for (int layer = 0; layer < experts.Length; layer++)
        {
            if (experts[layer] < 1)
                throw new MolaException($"layer {layer}: {experts[layer]} experts (each layer needs at least 1)");
            if (topK[layer] < 1)
                throw new MolaException($"layer {layer}: top-k {topK[layer]} (must be at least 1)");
            if (topK[layer] > experts[layer])
                throw new MolaException($"layer {layer}: top-k {topK[layer]} is more than its {experts[layer]} experts (top-k must not exceed the expert count in any layer)");
            if (rank[layer] < 1)
                throw new MolaException($"layer {layer}: rank {rank[layer]} (must be at least 1)");
        }
    }

    /// <summary>Runs of equal values as <c>value x layers</c>: <c>2x8, 4x8, 6x8, 8x8</c>; <c>8x32</c> when uniform.</summary>
    public static string Describe(int[] perLayer)
    {
        var runs = new List<string>();
        for (int start = 0; start < perLayer.Length;)
        {
            int end = start;
            while (end < perLayer.Length && perLayer[end] == perLayer[start]) end++;
            runs.Add($"{perLayer[start]}x{end - start}");
            start = end;
        }
        return string.Join(", ", runs);
    }

    static string PresetNames => "square:N, " + string.Join(", ", Presets.Keys);

    static int[] Square(string spec, string lower, int numLayers, string what)
    {
        if (!lower.StartsWith("square:", StringComparison.Ordinal))
            throw new MolaException(n => $"{n(what)} {spec}: the square preset needs its value, e.g. square:8");
        int n = Value(spec["square:".Length..].Trim(), spec, what);
        return Enumerable.Repeat(n, numLayers).ToArray();
    }

    static int Value(string text, string spec, string what)
    {
        if (text.Length == 0)
            throw new MolaException(n => $"{n(what)} {spec}: empty value in the list (expected positive integers separated by commas)");
        if (!text.All(char.IsAsciiDigit) || !int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int v))
        {
            string hint = text.Any(char.IsAsciiLetter) ? $"; presets: {PresetNames}" : "";
            throw new MolaException(n => $"{n(what)} {spec}: \"{text}\" is not a positive integer{hint}");
        }
        if (v < 1)
            throw new MolaException(n => $"{n(what)} {spec}: {v} is not allowed (every value must be at least 1)");
        return v;
    }

    /// <summary>
    /// How many consecutive layers each of <paramref name="groups"/> groups gets: L / G each, and the
    /// L mod G layers left over go one a group to the outermost groups first (first, last, second,
    /// second to last, ...). That keeps the split symmetric whenever it can be (22 layers in four
    /// groups: 6, 5, 5, 6), so a shape and its mirror image (2468 and 8642) get the same number of
    /// experts, as in the paper's same-budget comparisons; 28 layers give 7, 7, 7, 7 as the paper
    /// splits Gemma.
    /// </summary>
    public static int[] GroupSizes(int numLayers, int groups)
    {
        var sizes = Enumerable.Repeat(numLayers / groups, groups).ToArray();
        for (int i = 0; i < numLayers % groups; i++)
            sizes[i % 2 == 0 ? i / 2 : groups - 1 - i / 2]++;
        return sizes;
    }

    /// <summary>Repeats each value of a group pattern over its share of the layers (<see cref="GroupSizes"/>).</summary>
    static int[] Expand(int[] groups, int numLayers)
    {
        var sizes = GroupSizes(numLayers, groups.Length);
        return groups.SelectMany((value, g) => Enumerable.Repeat(value, sizes[g])).ToArray();
    }
}
