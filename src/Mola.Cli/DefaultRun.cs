using Mola.Evaluation;

namespace Mola.Cli;

/// <summary>The embedded default of <c>mola train</c>: a small base model and a multiple-choice task
/// that ship with the project (assets/, see assets/README.md), and the settings that train them.</summary>
public static class DefaultRun
{
    public sealed record RunSettings(double LearningRate, int WarmupSteps, int Epochs, int MaxSteps, int BatchSize, int MicroBatchSize, int SaveSteps, int CutoffLen, string Rank);

    public static readonly RunSettings Settings = new(LearningRate: 3e-3, WarmupSteps: 10, Epochs: 1, MaxSteps: 120, BatchSize: 16, MicroBatchSize: 8, SaveSteps: 0, CutoffLen: 256, Rank: "8");

    static string Assets => Path.Combine(AppContext.BaseDirectory, "assets");
    public static string ModelDirectory => Path.Combine(Assets, "default-model");
    public static string TrainData => Path.Combine(Assets, "default-task", "train.jsonl");
    public static string TestData => Path.Combine(Assets, "default-task", "test.jsonl");

    /// <summary>Four-option multiple choice answered "Answer: The answer is B.", as ScienceQA-style records.</summary>
    public static Benchmark Task => Benchmarks.Get("openbookqa");
}
