namespace Mola.Evaluation;

/// <summary>Counts for one label: how many records have it as gold, how many predictions name it
/// (unparsed predictions name no label), and how many of those are right.</summary>
public sealed record ClassCounts(string Label, int Gold, int Predicted, int Correct);

/// <summary>Scores of one benchmark run.</summary>
/// <param name="N">Records scored.</param>
/// <param name="Correct">Predictions equal to the gold label.</param>
/// <param name="Unparsed">Predictions from which no label could be read (null); they count as wrong.</param>
/// <param name="Accuracy">Correct / N (0 when N is 0).</param>
/// <param name="Labels">The task's labels, the order of <paramref name="PerClass"/> and of the confusion rows.</param>
/// <param name="PerClass">Counts per label, in label order.</param>
/// <param name="Confusion">Confusion[g][p]: records with gold label g (label order) predicted as label p;
/// the last column, index Labels.Count, counts the unparsed predictions of each gold label.</param>
/// <param name="Mcc">Matthews correlation for two-class tasks, null otherwise; see <see cref="Metrics.Compute"/>.</param>
public sealed record BenchmarkMetrics(
    int N, int Correct, int Unparsed, double Accuracy,
    IReadOnlyList<string> Labels, IReadOnlyList<ClassCounts> PerClass, int[][] Confusion, double? Mcc);

public static class Metrics
{
    /// <summary>Scores predictions against gold labels. Every gold label and every non-null prediction
    /// must be one of <paramref name="labels"/> (spelled as there); a null prediction is unparsed.
    ///
    /// Matthews correlation (two labels only) is computed from the 2x2 table in which an unparsed
    /// prediction is entered as the label that is not its gold one: it counts as wrong, as in
    /// accuracy, so accuracy = (TP + TN) / N on the same table and an unparsed answer can never raise
    /// the score. MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), and 0 when that
    /// denominator is 0 (one class never predicted or never gold). Swapping which label is
    /// "positive" does not change it.</summary>
    public static BenchmarkMetrics Compute(IReadOnlyList<string> labels, IReadOnlyList<string> gold, IReadOnlyList<string?> predicted)
    {
        if (labels.Count < 2) throw new ArgumentException("a task needs at least two labels", nameof(labels));
        if (gold.Count != predicted.Count) throw new ArgumentException($"{gold.Count} gold labels but {predicted.Count} predictions");
        int k = labels.Count;
        var index = labels.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i, StringComparer.Ordinal);
        int IndexOf(string label, string what) =>
            index.TryGetValue(label, out int i) ? i
            : throw new ArgumentException($"{what} \"{label}\" is not one of the labels ({string.Join(", ", labels)})");

        var confusion = Enumerable.Range(0, k).Select(_ => new int[k + 1]).ToArray();
        for (int r = 0; r < gold.Count; r++)
        {
            int g = IndexOf(gold[r], "gold label");
            int p = predicted[r] is string pred ? IndexOf(pred, "prediction") : k;
            confusion[g][p]++;
        }

        int n = gold.Count;
        int correct = Enumerable.Range(0, k).Sum(i => confusion[i][i]);
        int unparsed = confusion.Sum(row => row[k]);
        var perClass = Enumerable.Range(0, k)
            .Select(i => new ClassCounts(labels[i], confusion[i].Sum(), confusion.Sum(row => row[i]), confusion[i][i]))
            .ToList();
        double? mcc = k == 2 ? TwoClassMcc(confusion) : null;
        return new BenchmarkMetrics(n, correct, unparsed, n == 0 ? 0 : (double)correct / n, labels.ToList(), perClass, confusion, mcc);
    }

    static double TwoClassMcc(int[][] confusion)
    {
        // Label 0 as positive; an unparsed prediction goes to the other label than its gold one.
        double tp = confusion[0][0], fn = confusion[0][1] + confusion[0][2];
        double tn = confusion[1][1], fp = confusion[1][0] + confusion[1][2];
        double denominator = Math.Sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn));
        return denominator == 0 ? 0 : (tp * tn - fp * fn) / denominator;
    }
}
