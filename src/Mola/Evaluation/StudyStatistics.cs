using MathNet.Numerics;
using MathNet.Numerics.Distributions;

namespace Mola.Evaluation;

/// <summary>A mean over seeds with its 95% interval half-width (null with fewer than two values).</summary>
public sealed record MeanInterval(double Mean, double? HalfWidth, int N)
{
    public double? Low => Mean - HalfWidth;
    public double? High => Mean + HalfWidth;
}

/// <summary>A test's statistic and two-sided p-value; <paramref name="Method"/> says how p was computed.</summary>
public sealed record TestResult(double Statistic, double PValue, int N, string Method);

/// <summary>
/// The paper's statistics (Appendix F, Section 5.5): intervals over seeds, the Friedman test across variants, pairwise
/// Wilcoxon signed-rank tests and the Benjamini-Hochberg correction. Each follows scipy.stats (1.10) as documented
/// below, so a user can check a study's report with scipy; the tests compare against values scipy printed.
/// </summary>
public static class StudyStatistics
{
    /// <summary>The z of a 95% normal interval, as in the paper's Appendix F.</summary>
    public const double Z95 = 1.96;

    /// <summary>Mean ± 1.96 · s / sqrt(n), s the sample standard deviation (n - 1 in the denominator).</summary>
    public static MeanInterval Interval(IReadOnlyList<double> values)
    {
        if (values.Count == 0) throw new ArgumentException("no values", nameof(values));
        int n = values.Count;
        double mean = values.Average();
        if (n < 2) return new MeanInterval(mean, null, n);
        double variance = values.Sum(v => (v - mean) * (v - mean)) / (n - 1);
        return new MeanInterval(mean, Z95 * Math.Sqrt(variance) / Math.Sqrt(n), n);
    }

    /// <summary>Ranks 1..n with ties given their average rank (scipy's <c>rankdata</c>, method "average").</summary>
    public static double[] Ranks(IReadOnlyList<double> values)
    {
        var order = Enumerable.Range(0, values.Count).OrderBy(i => values[i]).ToArray();
        var ranks = new double[values.Count];
        for (int start = 0; start < order.Length;)
        {
            int end = start;
            while (end + 1 < order.Length && values[order[end + 1]] == values[order[start]]) end++;
            double rank = (start + end) / 2.0 + 1;
            for (int j = start; j <= end; j++) ranks[order[j]] = rank;
            start = end + 1;
        }
        return ranks;
    }

    /// <summary>Sum of t^3 - t over the groups of tied values (t values share a rank).</summary>
    static double TieTerm(IEnumerable<double> ranks) => ranks.GroupBy(r => r).Sum(g => Math.Pow(g.Count(), 3) - g.Count());

    /// <summary>
    /// Friedman's test (scipy.stats.friedmanchisquare): <paramref name="blocks"/>[b][j] is treatment j's score in block
    /// b (here: a variant's accuracy on one task and seed). Ranks within each block (ties averaged),
    /// chi2 = (12 / (n k (k+1)) · sum_j R_j^2 - 3 n (k+1)) / C with the tie correction C = 1 - sum(t^3 - t) / (n k (k^2 - 1)),
    /// p from the chi-square distribution with k - 1 degrees of freedom. Every block tied throughout (C = 0): statistic 0, p 1.
    /// </summary>
    public static TestResult Friedman(IReadOnlyList<IReadOnlyList<double>> blocks)
    {
        int n = blocks.Count;
        if (n < 1) throw new ArgumentException("no blocks", nameof(blocks));
        int k = blocks[0].Count;
        if (k < 3) throw new ArgumentException("the Friedman test needs at least three treatments", nameof(blocks));
        if (blocks.Any(b => b.Count != k)) throw new ArgumentException("every block needs a score for every treatment", nameof(blocks));
        var rankSums = new double[k];
        double ties = 0;
        foreach (var block in blocks)
        {
            var r = Ranks(block);
            for (int j = 0; j < k; j++) rankSums[j] += r[j];
            ties += TieTerm(r);
        }
        double c = 1 - ties / ((double)k * (k * k - 1) * n);
        if (c <= 0) return new TestResult(0, 1, n, "chi-square");
        double chi2 = (12.0 / (n * k * (k + 1.0)) * rankSums.Sum(s => s * s) - 3.0 * n * (k + 1)) / c;
        return new TestResult(chi2, SpecialFunctions.GammaUpperRegularized((k - 1) / 2.0, chi2 / 2), n, "chi-square");
    }

    /// <summary>
    /// Wilcoxon's signed-rank test, two-sided, on the paired differences x - y (scipy.stats.wilcoxon with its defaults:
    /// zero_method "wilcox", correction off). The statistic is min(W+, W-) over the ranks of |d| (ties averaged). With at
    /// most 50 pairs, no zero difference and no tied |d|, p is exact: 2 · min(P(W+ &lt;= w), P(W+ &gt;= w)) under the 2^n
    /// equally likely signs, at most 1 (scipy's "auto"). Otherwise zero differences are dropped and p is the normal
    /// approximation (scipy switches to it for zeros; for ties too since 1.13, where 1.10 still used the exact table): z = (T - n(n+1)/4) / sqrt((n(n+1)(2n+1)
    /// - sum(t^3 - t) / 2) / 24), p = 2 · (1 - Phi(|z|)). No non-zero difference at all: statistic 0, p 1.
    /// </summary>
    public static TestResult Wilcoxon(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException("paired samples of different lengths");
        var all = x.Zip(y, (a, b) => a - b).ToList();
        var d = all.Where(v => v != 0).ToList();
        int n = d.Count;
        if (n == 0) return new TestResult(0, 1, 0, "none");
        var ranks = Ranks(d.Select(Math.Abs).ToList());
        double plus = 0, minus = 0;
        for (int i = 0; i < n; i++)
            if (d[i] > 0) plus += ranks[i]; else minus += ranks[i];
        double t = Math.Min(plus, minus);
        double ties = TieTerm(ranks);
        if (all.Count <= 50 && n == all.Count && ties == 0)
        {
            var counts = SignedRankCounts(n);
            double total = Math.Pow(2, n);
            int w = (int)plus;
            double below = counts.Take(w + 1).Sum() / total, above = counts.Skip(w).Sum() / total;
            return new TestResult(t, Math.Min(1, 2 * Math.Min(below, above)), n, "exact");
        }
        double mean = n * (n + 1) / 4.0;
        double sd = Math.Sqrt((n * (n + 1.0) * (2 * n + 1) - ties / 2) / 24);
        double z = (t - mean) / sd;
        return new TestResult(t, Math.Min(1, 2 * Normal.CDF(0, 1, -Math.Abs(z))), n, "normal");
    }

    /// <summary>counts[w]: how many of the 2^n sign choices over ranks 1..n give W+ = w.</summary>
    static double[] SignedRankCounts(int n)
    {
        int max = n * (n + 1) / 2;
        var counts = new double[max + 1];
        counts[0] = 1;
        for (int rank = 1; rank <= n; rank++)
            for (int w = max; w >= rank; w--) counts[w] += counts[w - rank];
        return counts;
    }

    /// <summary>Benjamini-Hochberg adjusted p-values (q-values), in the input's order: q_(i) = min over j &gt;= i of
    /// p_(j) · m / j over the ascending p_(1..m), at most 1 (scipy.stats.false_discovery_control, method "bh").</summary>
    public static double[] BenjaminiHochberg(IReadOnlyList<double> p)
    {
        int m = p.Count;
        var order = Enumerable.Range(0, m).OrderBy(i => p[i]).ToArray();
        var q = new double[m];
        double running = 1;
        for (int rank = m; rank >= 1; rank--)
        {
            int i = order[rank - 1];
            running = Math.Min(running, p[i] * m / rank);
            q[i] = running;
        }
        return q;
    }
}
