using Mola.Evaluation;
using Xunit;

namespace Mola.Tests;

public class MetricsTests
{
    static readonly string[] Cola = ["unacceptable", "acceptable"];
    const string U = "unacceptable", A = "acceptable";

    // Ten CoLA records, worked out by hand.
    //   gold acceptable   (6): predicted acceptable 4, unacceptable 1, unparsed 1
    //   gold unacceptable (4): predicted acceptable 1, unacceptable 2, unparsed 1
    // Accuracy = (4 + 2) / 10 = 0.6; unparsed = 2.
    // Per class: acceptable   gold 6, predicted 4 + 1 = 5, correct 4
    //            unacceptable gold 4, predicted 1 + 2 = 3, correct 2
    // MCC, acceptable as positive, each unparsed entered as the other label than its gold:
    //   TP = 4, FN = 1 + 1 = 2, TN = 2, FP = 1 + 1 = 2
    //   MCC = (4·2 − 2·2) / sqrt((4+2)(4+2)(2+2)(2+2)) = 4 / sqrt(576) = 4 / 24 = 1/6
    static readonly string[] ColaGold = [A, A, A, A, A, A, U, U, U, U];
    static readonly string?[] ColaPredicted = [A, A, A, A, U, null, A, U, U, null];

    [Fact]
    public void TwoClassCountsAccuracyAndMccMatchTheHandComputedCase()
    {
        var m = Metrics.Compute(Cola, ColaGold, ColaPredicted);
        Assert.Equal(10, m.N);
        Assert.Equal(6, m.Correct);
        Assert.Equal(2, m.Unparsed);
        Assert.Equal(0.6, m.Accuracy, 12);
        Assert.Equal(new ClassCounts(U, Gold: 4, Predicted: 3, Correct: 2), m.PerClass[0]);
        Assert.Equal(new ClassCounts(A, Gold: 6, Predicted: 5, Correct: 4), m.PerClass[1]);
        // Rows gold (unacceptable, acceptable); columns predicted (unacceptable, acceptable, unparsed).
        Assert.Equal([2, 1, 1], m.Confusion[0]);
        Assert.Equal([1, 4, 1], m.Confusion[1]);
        Assert.Equal(1.0 / 6.0, m.Mcc!.Value, 12);
    }

    [Fact]
    public void MccAgreesWithTheTextbookFormulaOnAnotherCase()
    {
        // gold [1,1,1,0,0,0], predicted [1,0,1,0,0,1]: TP 2, FN 1, TN 2, FP 1
        // MCC = (2·2 − 1·1) / sqrt(3·3·3·3) = 3 / 9 = 1/3
        var m = Metrics.Compute(Cola, [A, A, A, U, U, U], [A, U, A, U, U, A]);
        Assert.Equal(1.0 / 3.0, m.Mcc!.Value, 12);
        Assert.Equal(4.0 / 6.0, m.Accuracy, 12);
        Assert.Equal(0, m.Unparsed);
    }

    [Fact]
    public void MccIsSymmetricInWhichLabelIsPositive()
    {
        var swapped = Metrics.Compute([A, U], ColaGold, ColaPredicted);
        Assert.Equal(1.0 / 6.0, swapped.Mcc!.Value, 12);
    }

    [Fact]
    public void MccIsOneForPerfectAndMinusOneForInvertedPredictions()
    {
        Assert.Equal(1.0, Metrics.Compute(Cola, [A, U, A], [A, U, A]).Mcc!.Value, 12);
        Assert.Equal(-1.0, Metrics.Compute(Cola, [A, U, A], [U, A, U]).Mcc!.Value, 12);
    }

    [Fact]
    public void MccIsZeroWhenADenominatorFactorIsZero()
    {
        // Always predicting "acceptable": TN + FN = 0.
        var m = Metrics.Compute(Cola, [A, A, U, U], [A, A, A, A]);
        Assert.Equal(0.0, m.Mcc);
        Assert.Equal(0.5, m.Accuracy, 12);
        // Only one gold class: TN + FP = 0.
        Assert.Equal(0.0, Metrics.Compute(Cola, [A, A], [A, U]).Mcc);
    }

    [Fact]
    public void UnparsedPredictionsNeverRaiseMcc()
    {
        // All unparsed: every record is wrong, the 2x2 table is TP 0, FN 2, TN 0, FP 2 -> MCC = (0 − 4) / sqrt(2·2·2·2) = −1.
        var m = Metrics.Compute(Cola, [A, A, U, U], [null, null, null, null]);
        Assert.Equal(4, m.Unparsed);
        Assert.Equal(0.0, m.Accuracy);
        Assert.Equal(-1.0, m.Mcc!.Value, 12);
        Assert.All(m.PerClass, c => Assert.Equal(0, c.Predicted));
    }

    [Fact]
    public void MultiClassCountsAndConfusionMatchTheHandComputedCase()
    {
        // Seven records over A, B, C (MCC only for two classes):
        //   gold A: predicted A, A, B        -> row A: A 2, B 1, C 0, unparsed 0
        //   gold B: predicted B, null        -> row B: A 0, B 1, C 0, unparsed 1
        //   gold C: predicted A, C           -> row C: A 1, B 0, C 1, unparsed 0
        // Correct = 2 + 1 + 1 = 4 of 7; predicted counts A 3, B 2, C 1.
        string[] labels = ["A", "B", "C"];
        var m = Metrics.Compute(labels, ["A", "A", "A", "B", "B", "C", "C"], ["A", "A", "B", "B", null, "A", "C"]);
        Assert.Equal(7, m.N);
        Assert.Equal(4, m.Correct);
        Assert.Equal(1, m.Unparsed);
        Assert.Equal(4.0 / 7.0, m.Accuracy, 12);
        Assert.Null(m.Mcc);
        Assert.Equal([new("A", 3, 3, 2), new("B", 2, 2, 1), new ClassCounts("C", 2, 1, 1)], m.PerClass);
        Assert.Equal([2, 1, 0, 0], m.Confusion[0]);
        Assert.Equal([0, 1, 0, 1], m.Confusion[1]);
        Assert.Equal([1, 0, 1, 0], m.Confusion[2]);
        Assert.Equal(labels, m.Labels);
    }

    [Fact]
    public void NoRecordsGiveZeroAccuracy()
    {
        var m = Metrics.Compute(Cola, [], []);
        Assert.Equal(0, m.N);
        Assert.Equal(0.0, m.Accuracy);
        Assert.Equal(0.0, m.Mcc);
    }

    [Fact]
    public void LabelsOutsideTheSetAndMismatchedLengthsAreArgumentErrors()
    {
        Assert.Throws<ArgumentException>(() => Metrics.Compute(Cola, ["maybe"], [A]));
        Assert.Throws<ArgumentException>(() => Metrics.Compute(Cola, [A], ["Acceptable"]));
        Assert.Throws<ArgumentException>(() => Metrics.Compute(Cola, [A, U], [A]));
        Assert.Throws<ArgumentException>(() => Metrics.Compute(["A"], ["A"], ["A"]));
    }
}
