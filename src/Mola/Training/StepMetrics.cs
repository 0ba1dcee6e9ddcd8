namespace Mola.Training;

/// <summary>One line of <c>metrics.jsonl</c>: one optimizer step.</summary>
public sealed record StepMetrics
{
    public required long Step { get; init; }
    public required double Epoch { get; init; }
    public required double Loss { get; init; }
    public required double CeLoss { get; init; }
    public required double AuxLoss { get; init; }
    public required double Lr { get; init; }
    public required double GradNorm { get; init; }
    public required double TokensPerSecond { get; init; }
    public double? EvalLoss { get; init; }
}
