namespace Mola.Training;

/// <summary>Where a run stands: optimizer steps done, and the data position (epoch, next micro-batch).</summary>
public sealed class TrainerState
{
    public long Step { get; set; }
    public int Epoch { get; set; }
    public int MicroBatch { get; set; }
}
