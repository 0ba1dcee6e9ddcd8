using Mola.Evaluation;
using Xunit;

namespace Mola.Tests;

/// <summary>The study's statistics against hand-computed cases and values scipy 1.10.1 printed
/// (/usr/bin/python3 with Debian's python3-scipy; the calls are quoted beside each case).</summary>
public class StudyStatisticsTests
{
    [Fact]
    public void IntervalIsMeanPlusMinusZTimesStandardError()
    {
        // By hand: mean 91.9667; deviations -0.4667, 0.0333, 0.4333; s^2 = 0.40667 / 2 = 0.20333; s = 0.45092;
        // 1.96 * s / sqrt(3) = 0.51027.
        var i = StudyStatistics.Interval([91.5, 92.0, 92.4]);
        Assert.Equal(91.96667, i.Mean, 5);
        Assert.Equal(0.51027, i.HalfWidth!.Value, 5);
        Assert.Equal(91.45640, i.Low!.Value, 5);
        Assert.Null(StudyStatistics.Interval([80.0]).HalfWidth);
    }

    [Fact]
    public void RanksAverageTies() =>
        Assert.Equal([2.5, 1, 2.5, 4], StudyStatistics.Ranks([3.0, 1.0, 3.0, 7.0]));

    [Fact]
    public void FriedmanWithoutTies()
    {
        // Blocks (rows) x treatments: ranks per block 123, 231, 123, 123 -> rank sums 5, 9, 10;
        // chi2 = 12 / (4 * 3 * 4) * (25 + 81 + 100) - 3 * 4 * 4 = 3.5; p = exp(-3.5 / 2) for 2 degrees of freedom.
        // scipy: friedmanchisquare([1,2,3,4],[2,3,4,5],[3,1,5,6]) -> 3.5, 0.1737739434504451
        var r = StudyStatistics.Friedman([[1, 2, 3], [2, 3, 1], [3, 4, 5], [4, 5, 6]]);
        Assert.Equal(3.5, r.Statistic, 12);
        Assert.Equal(Math.Exp(-1.75), r.PValue, 12);
        Assert.Equal(0.1737739434504451, r.PValue, 12);
    }

    [Fact]
    public void FriedmanWithTiesMatchesScipy()
    {
        // scipy: friedmanchisquare([85,90,70,60,75],[85,91,72,61,70],[80,92,72,65,78],[84,89,71,60,79])
        //   -> 2.744680851063828, 0.4326875749482074 (treatments are the arguments, blocks the positions)
        double[][] treatments = [[85, 90, 70, 60, 75], [85, 91, 72, 61, 70], [80, 92, 72, 65, 78], [84, 89, 71, 60, 79]];
        var blocks = Enumerable.Range(0, 5).Select(b => (IReadOnlyList<double>)treatments.Select(t => t[b]).ToList()).ToList();
        var r = StudyStatistics.Friedman(blocks);
        Assert.Equal(2.744680851063828, r.Statistic, 10);
        Assert.Equal(0.4326875749482074, r.PValue, 10);
    }

    [Fact]
    public void WilcoxonExactByHand()
    {
        // d = 0.952 -0.147 1.022 0.43 0.62 0.59 0.49 -0.08 0.01; |d| ranks: the negatives have ranks 3 and 2, so
        // W- = 5 = T. P(W+ <= 5) = subsets of 1..9 summing to at most 5 (1+1+1+2+2+3 = 10) / 512; p = 2 * 10 / 512.
        // scipy: wilcoxon(x, y) -> 5.0, 0.0390625
        double[] x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30];
        double[] y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29];
        var r = StudyStatistics.Wilcoxon(x, y);
        Assert.Equal(5, r.Statistic);
        Assert.Equal(20.0 / 512, r.PValue, 12);
        Assert.Equal("exact", r.Method);
    }

    [Fact]
    public void WilcoxonNormalApproximationWithZerosAndTiesMatchesScipy()
    {
        // Two zero differences (dropped) and tied |d|: the normal approximation with the tie correction.
        // scipy: wilcoxon([1..12], [1.5,2,2,5,3.5,7,6,9.5,8,10,13,11]) -> 26.5, 0.9168525970448882
        double[] a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        double[] b = [1.5, 2, 2, 5, 3.5, 7, 6, 9.5, 8, 10, 13, 11];
        var r = StudyStatistics.Wilcoxon(a, b);
        Assert.Equal(26.5, r.Statistic);
        Assert.Equal(0.9168525970448882, r.PValue, 10);
        Assert.Equal(10, r.N);
        Assert.Equal("normal", r.Method);
    }

    [Fact]
    public void WilcoxonOverFiftyPairsIsNormal()
    {
        // scipy: a = 1..60, b = [v + (-1)**v * (v % 7) * 0.5 + 0.3 for v in a]; wilcoxon(a, b) -> 699.0, 0.11176351805398471
        var a = Enumerable.Range(1, 60).Select(v => (double)v).ToList();
        var b = a.Select(v => v + (((int)v % 2 == 0) ? 1 : -1) * ((int)v % 7) * 0.5 + 0.3).ToList();
        var r = StudyStatistics.Wilcoxon(a, b);
        Assert.Equal(699, r.Statistic);
        Assert.Equal(0.11176351805398471, r.PValue, 10);
    }

    [Fact]
    public void WilcoxonOfIdenticalSamplesIsNoEvidence()
    {
        var r = StudyStatistics.Wilcoxon([1.0, 2.0], [1.0, 2.0]);
        Assert.Equal(1, r.PValue);
        Assert.Equal(0, r.N);
    }

    [Fact]
    public void BenjaminiHochbergByHand()
    {
        // Ascending 0.01, 0.03, 0.04, 0.20 times m / rank: 0.04, 0.06, 0.0533, 0.20; running minimum from the top:
        // 0.20, 0.0533, 0.0533, 0.04; back in the input's order.
        var q = StudyStatistics.BenjaminiHochberg([0.01, 0.04, 0.03, 0.20]);
        double[] expected = [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.20];
        for (int i = 0; i < 4; i++) Assert.Equal(expected[i], q[i], 12);
        Assert.Equal(0.9, StudyStatistics.BenjaminiHochberg([0.6, 0.9])[1], 12);   // 0.9 * 2 / 2; 0.6 * 2 / 1 = 1.2 > 0.9
    }
}

/// <summary>OP and PD on the paper's Table 6 (../shared/docs/PAPER.md; rows trained-on, columns tested-on, order Bio,
/// Phy, Chem, Econ, Earth) against the values computed from that table, which Table 5 prints from unrounded
/// accuracies (78.67 / -2.17, 88.80 / -0.6, 89.82 / -0.47, 88.84 / -2.10; 8228: Table 5 -3.92, Table 6 gives -3.96).</summary>
public class ContinualMetricsTests
{
    static readonly Dictionary<string, double[][]> Table6 = new()
    {
        ["LoRA"] = [[92.19, 61.46, 55.46, 60.71, 52.31], [88.16, 89.58, 55.46, 72.62, 61.54], [85.14, 81.77, 93.28, 59.52, 58.46], [78.84, 78.13, 70.59, 73.81, 38.46], [84.13, 77.08, 87.39, 78.57, 66.15]],
        ["5555"] = [[94.71, 60.94, 63.87, 72.62, 63.08], [91.44, 89.06, 36.13, 79.76, 58.46], [90.43, 81.25, 94.96, 61.90, 60.00], [89.67, 88.02, 92.44, 82.14, 56.92], [88.66, 85.94, 93.28, 86.90, 89.23]],
        ["8228"] = [[95.97, 64.06, 55.46, 66.67, 55.38], [91.44, 92.19, 51.26, 78.57, 76.92], [82.62, 85.42, 94.96, 58.33, 60.00], [83.12, 83.85, 92.44, 94.05, 60.00], [83.38, 81.77, 89.08, 83.33, 81.54]],
        ["8642"] = [[95.97, 64.58, 57.98, 70.24, 52.31], [92.44, 90.10, 57.14, 80.95, 66.15], [89.67, 85.42, 95.80, 48.81, 52.31], [88.66, 87.50, 96.64, 94.05, 47.69], [86.15, 85.42, 94.12, 89.29, 89.23]],
        ["2468"] = [[94.96, 66.67, 61.34, 66.67, 61.54], [91.69, 88.54, 52.10, 77.38, 63.08], [87.91, 91.15, 94.12, 72.62, 66.15], [87.15, 86.98, 94.12, 86.90, 61.54], [88.16, 91.67, 90.76, 89.29, 89.23]],
    };

    [Theory]
    [InlineData("LoRA", 78.66, -2.17)]
    [InlineData("5555", 88.80, -0.61)]
    [InlineData("2468", 89.82, -0.46)]
    [InlineData("8642", 88.84, -2.09)]
    [InlineData("8228", 83.82, -3.96)]
    public void OverallPerformanceAndDropOnTable6(string variant, double op, double pd)
    {
        var r = Table6[variant].Select(row => (IReadOnlyList<double>)row).ToList();
        Assert.Equal(op, Math.Round(ContinualMetrics.OverallPerformance(r), 2));
        Assert.Equal(pd, Math.Round(ContinualMetrics.PerformanceDrop(r), 2));
    }

    [Fact]
    public void DropByHandOnTwoDomains()
    {
        // One earlier domain, one change: 70 -> 60 is a drop of -10; OP is the last row's mean (60 + 90) / 2.
        IReadOnlyList<IReadOnlyList<double>> r = [[70.0, 20.0], [60.0, 90.0]];
        Assert.Equal(-10, ContinualMetrics.PerformanceDrop(r));
        Assert.Equal(75, ContinualMetrics.OverallPerformance(r));
    }
}
