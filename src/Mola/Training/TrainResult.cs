namespace Mola.Training;

/// <param name="Steps">The step the run ended at (the total, counting steps before a resume).</param>
/// <param name="StartStep">The step it started from: 0, or the resumed checkpoint's step.</param>
/// <param name="Interrupted">Stopped on request before the end: no final adapter; <paramref name="Checkpoint"/> continues it.</param>
/// <param name="Checkpoint">When interrupted, the checkpoint to resume from (null: none was saved, nothing to continue).</param>
public sealed record TrainResult(long Steps, double? FinalLoss, double? EvalLoss, double Seconds, string OutputDirectory, long StartStep = 0,
    bool Interrupted = false, string? Checkpoint = null);
