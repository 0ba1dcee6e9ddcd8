namespace Mola.Training;

/// <summary>Linear warm-up from 0, then linear decay to 0 at the last step (as
/// <c>get_linear_schedule_with_warmup</c>): the factor for optimizer step s (0-based).</summary>
public static class LrSchedule
{
    public static double Factor(long step, long warmupSteps, long totalSteps)
    {
        if (step < warmupSteps) return (double)step / Math.Max(1, warmupSteps);
        return Math.Max(0.0, (double)(totalSteps - step) / Math.Max(1, totalSteps - warmupSteps));
    }
}
