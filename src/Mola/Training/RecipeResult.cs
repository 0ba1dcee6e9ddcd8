namespace Mola.Training;

/// <param name="Train">What the loop did (interrupted or finished).</param>
/// <param name="TrainableParameters">The adapter's parameter count.</param>
/// <param name="ReplacedRun">A previous run in the output directory was moved aside for this one (and, when
/// <see cref="TrainResult.Interrupted"/> with a checkpoint, is still kept in <c>.previous-run/</c>).</param>
public sealed record RecipeResult(TrainResult Train, long TrainableParameters, bool ReplacedRun);
