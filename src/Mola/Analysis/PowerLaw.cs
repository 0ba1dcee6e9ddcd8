namespace Mola.Analysis;

/// <summary>Which tail starts (x_min candidates) the Kolmogorov-Smirnov search of <see cref="PowerLaw.Fit"/> tries.</summary>
public enum XminSearch
{
    /// <summary>Every eigenvalue but the largest, as in Clauset, Shalizi and Newman (2009) and WeightWatcher's
    /// default fit.</summary>
    All,
    /// <summary>Only eigenvalues within [0.95 p, 1.5 p] of the peak p of the spectrum's histogram (100 bins of
    /// log10 lambda; p the left edge of the fullest bin), as AlphaLoRA and TempBalance restrict the search: the
    /// tail then starts where the bulk of the spectrum falls off, never in a few outliers at its top.</summary>
    Peak,
}

/// <summary>A fitted power-law tail: <c>p(lambda) ~ lambda^-alpha</c> for lambda at or above <see cref="Xmin"/>.</summary>
/// <param name="Alpha">PL_Alpha_Hill: the Hill (maximum-likelihood) exponent of the tail.</param>
/// <param name="Xmin">The tail's start, an eigenvalue.</param>
/// <param name="TailSize">Eigenvalues at or above <see cref="Xmin"/> (x_min itself included).</param>
/// <param name="KsDistance">Kolmogorov-Smirnov distance between the tail and the fitted law.</param>
/// <param name="Eigenvalues">Nonzero eigenvalues the fit saw.</param>
public sealed record PowerLawFit(double Alpha, double Xmin, int TailSize, double KsDistance, int Eigenvalues);

/// <summary>
/// PL_Alpha_Hill of a spectrum (heavy-tailed self-regularisation, Martin and Mahoney; the MoLA paper's Appendix H).
/// For the tail from x_min = lambda_k (eigenvalues sorted ascending), the Hill estimate is
/// <c>alpha = 1 + n / sum_{i>=k} ln(lambda_i / lambda_k)</c> with n the tail's size; x_min is the candidate whose
/// fitted law is closest to the tail's empirical distribution in Kolmogorov-Smirnov distance.
/// </summary>
public static class PowerLaw
{
    /// <summary>Eigenvalues below this fraction of the largest are zeros of a rank-deficient matrix made inexact
    /// by rounding (a singular value below 1e-6 of the largest), not part of the spectrum.</summary>
    public const double RelativeZero = 1e-12;

    const int HistogramBins = 100;

    /// <summary>Fits the tail of <paramref name="eigenvalues"/> (any order; zeros dropped).</summary>
    public static PowerLawFit Fit(IReadOnlyList<double> eigenvalues, XminSearch search = XminSearch.Peak)
    {
        foreach (double v in eigenvalues)
            if (!double.IsFinite(v) || v < 0) throw new ArgumentException($"eigenvalues must be finite and non-negative, got {v}", nameof(eigenvalues));
        double max = eigenvalues.Count == 0 ? 0 : eigenvalues.Max();
        var x = eigenvalues.Where(v => v > max * RelativeZero && v > 0).Order().ToArray();
        if (x.Length < 2 || x[0] == x[^1])
            throw new MolaException($"a spectrum of {x.Length} nonzero eigenvalue(s), all equal, has no tail to fit");

        // Suffix sums of ln(lambda): the tail's sum of ln(lambda_i / lambda_k) is suffix[k] - n ln(lambda_k).
        var suffix = new double[x.Length + 1];
        for (int i = x.Length - 1; i >= 0; i--) suffix[i] = suffix[i + 1] + Math.Log(x[i]);

        var candidates = Candidates(x, search);
        PowerLawFit? best = null;
        foreach (int k in candidates)
        {
            int n = x.Length - k;
            double logSum = suffix[k] - n * Math.Log(x[k]);
            if (logSum <= 0) continue;   // a tail of equal values has no exponent
            double alpha = 1 + n / logSum;
            double d = KsDistance(x, k, alpha);
            if (best is null || d < best.KsDistance) best = new PowerLawFit(alpha, x[k], n, d, x.Length);
        }
        return best ?? throw new MolaException("no x_min candidate gives a tail of distinct eigenvalues");
    }

    /// <summary>The Hill estimate for the tail from index <paramref name="k"/> of ascending <paramref name="sorted"/>.</summary>
    public static double HillAlpha(IReadOnlyList<double> sorted, int k)
    {
        int n = sorted.Count - k;
        double sum = 0;
        for (int i = k; i < sorted.Count; i++) sum += Math.Log(sorted[i] / sorted[k]);
        return 1 + n / sum;
    }

    /// <summary>
    /// sup |S(x) - F(x)| over the tail x_k..x_{N-1} of ascending <paramref name="sorted"/>, where
    /// <c>F(x) = 1 - (x / x_k)^(1 - alpha)</c> is the fitted law's CDF and S the tail's empirical CDF, a step function
    /// rising from i/n to (i+1)/n at the tail's i-th value: both sides of every step are compared.
    /// </summary>
    public static double KsDistance(IReadOnlyList<double> sorted, int k, double alpha)
    {
        int n = sorted.Count - k;
        double d = 0;
        for (int i = 0; i < n; i++)
        {
            double f = 1 - Math.Pow(sorted[k + i] / sorted[k], 1 - alpha);
            d = Math.Max(d, Math.Max(f - (double)i / n, (double)(i + 1) / n - f));
        }
        return d;
    }

    /// <summary>Tail starts to try: indices into ascending <paramref name="x"/>, never the largest value (a tail of one).</summary>
    internal static IEnumerable<int> Candidates(double[] x, XminSearch search)
    {
        var all = Enumerable.Range(0, x.Length - 1);
        if (search == XminSearch.All) return all;
        double peak = HistogramPeak(x);
        var near = all.Where(k => x[k] >= 0.95 * peak && x[k] <= 1.5 * peak).ToList();
        // Bins wider than the window (a spectrum spanning over 17 decades) can leave it empty: search everywhere then.
        return near.Count > 0 ? near : all;
    }

    /// <summary>The left edge of the fullest of 100 equal bins of log10 lambda between the smallest and largest
    /// value (the first such bin on a tie).</summary>
    internal static double HistogramPeak(double[] sortedAscending)
    {
        double lo = Math.Log10(sortedAscending[0]), hi = Math.Log10(sortedAscending[^1]);
        double width = (hi - lo) / HistogramBins;
        var counts = new int[HistogramBins];
        foreach (double v in sortedAscending)
            counts[Math.Min(HistogramBins - 1, (int)((Math.Log10(v) - lo) / width))]++;
        int fullest = Array.IndexOf(counts, counts.Max());
        return Math.Pow(10, lo + fullest * width);
    }
}

public static class XminSearchOption
{
    /// <summary>Reads <c>peak</c> or <c>all</c>; <paramref name="what"/> names the setting (its key, e.g. <c>xmin_search</c>) for the error.</summary>
    public static XminSearch Parse(string text, string what) => text.Trim().ToLowerInvariant() switch
    {
        "peak" => XminSearch.Peak,
        "all" => XminSearch.All,
        _ => throw new MolaException(n => $"{n(what)}: \"{text}\" is not a search (expected peak or all)"),
    };
}
