namespace Mola.Evaluation;

/// <summary>
/// The continual-learning measures of the paper's Appendix C over the matrix R, R[k][i] the accuracy on domain i after
/// training through domain k (rows trained-on, columns tested-on, both in the sequence's order, as Table 6).
/// </summary>
public static class ContinualMetrics
{
    /// <summary>Overall performance: OP = (1/t) sum_i R[t][i], the mean of the last row.</summary>
    public static double OverallPerformance(IReadOnlyList<IReadOnlyList<double>> r)
    {
        CheckSquare(r);
        return r[^1].Average();
    }

    /// <summary>Performance drop: PD = (1 / (t(t-1)/2)) sum_{k=2..t} sum_{i&lt;k} (R[k][i] - R[k-1][i]), the mean change
    /// on the domains already learned each time a new one is trained (negative: forgetting). 0 for one domain.</summary>
    public static double PerformanceDrop(IReadOnlyList<IReadOnlyList<double>> r)
    {
        CheckSquare(r);
        int t = r.Count;
        if (t < 2) return 0;
        double sum = 0;
        for (int k = 1; k < t; k++)
            for (int i = 0; i < k; i++) sum += r[k][i] - r[k - 1][i];
        return sum / (t * (t - 1) / 2.0);
    }

    static void CheckSquare(IReadOnlyList<IReadOnlyList<double>> r)
    {
        if (r.Count == 0 || r.Any(row => row.Count != r.Count))
            throw new ArgumentException("R must be t x t: one row per training stage, one column per domain");
    }
}
