namespace Mola.Training.Monitoring;

/// <summary>
/// Where a run's metrics go besides <c>metrics.jsonl</c> (TensorBoard, the loss curve): the trainer calls each sink
/// where it writes a metrics line, at the start (after a resume has been restored) and at the end of the loop.
/// </summary>
public interface IMetricsSink : IDisposable
{
    /// <summary>The loop is about to run from <paramref name="step"/> (above 0 on a resume).</summary>
    void Started(long step) { }

    /// <summary>An optimizer step, as written to metrics.jsonl.</summary>
    void Step(StepMetrics metrics);

    /// <summary>The evaluation loss after the last step (eval.jsonl).</summary>
    void Evaluated(long step, double evalLoss) { }

    /// <summary>The loop ended at <paramref name="step"/>: finished or interrupted.</summary>
    void Finished(long step) { }
}
