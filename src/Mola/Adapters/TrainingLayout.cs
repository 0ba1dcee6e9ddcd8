using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// Whether the adapter layers lay out their products for a backward pass that follows (contiguous copies of the
/// small weights: worth it when autograd will run, see <see cref="MolaLayer"/>). That is the case when autograd is on,
/// and also inside <see cref="Force"/>: gradient checkpointing runs its first forward without autograd but must take
/// the same code path, and so the same rounding, as the recompute that the backward pass runs with autograd on.
/// </summary>
public static class TrainingLayout
{
    [ThreadStatic] static int t_forced;

    public static bool BackwardFollows => is_grad_enabled() || t_forced > 0;

    /// <summary>Until disposed, layers on this thread take the training layout whether or not autograd is on.</summary>
    public static IDisposable Force()
    {
        t_forced++;
        return new Scope();
    }

    sealed class Scope : IDisposable
    {
        bool _done;
        public void Dispose()
        {
            if (_done) return;
            _done = true;
            t_forced--;
        }
    }
}
