namespace Mola.Training;

/// <summary>The optimisation side of a run (the paper's recipe by default; see MOLA.md).</summary>
public sealed record TrainingOptions
{
    public double LearningRate { get; init; } = 3e-4;
    public int WarmupSteps { get; init; } = 100;
    public int Epochs { get; init; } = 3;
    /// <summary>When positive, the run stops after this many optimizer steps (and the schedule spans them).</summary>
    public int MaxSteps { get; init; }
    /// <summary>Examples per optimizer step (the effective batch).</summary>
    public int BatchSize { get; init; } = 128;
    /// <summary>Examples per forward pass; gradients accumulate over BatchSize / MicroBatchSize passes.</summary>
    public int MicroBatchSize { get; init; } = 8;
    public double MaxGradNorm { get; init; } = 1.0;
    public double WeightDecay { get; init; }
    public bool GroupByLength { get; init; }
    public int Seed { get; init; } = 42;
    /// <summary>Save a checkpoint every this many steps (0: only at the end).</summary>
    public int SaveSteps { get; init; } = 200;
    /// <summary>Checkpoints kept (oldest deleted first); 0 keeps all.</summary>
    public int SaveTotalLimit { get; init; } = 3;
    /// <summary>Evaluate on the validation split every this many steps (0: at checkpoints and at the end).</summary>
    public int EvalSteps { get; init; }
    /// <summary>Keep only each decoder layer's input and recompute the layer in the backward pass: less activation
    /// memory for one more forward pass; the same gradients (<see cref="Adapters.AdapterModel.CheckpointedBackward"/>).</summary>
    public bool GradientCheckpointing { get; init; }

    public void Validate()
    {
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate)) throw new MolaException(n => $"{n("learning_rate")} must be a positive finite number, got {LearningRate}");
        if (WarmupSteps < 0) throw new MolaException(n => $"{n("warmup_steps")} must be 0 or more, got {WarmupSteps}");
        if (Epochs < 1 && MaxSteps <= 0) throw new MolaException(n => $"{n("epochs")} must be at least 1, got {Epochs}");
        if (MaxSteps < 0) throw new MolaException(n => $"{n("max_steps")} must be 0 (off) or more, got {MaxSteps}");
        if (MicroBatchSize < 1) throw new MolaException(n => $"{n("micro_batch_size")} must be at least 1, got {MicroBatchSize}");
        if (BatchSize < 1) throw new MolaException(n => $"{n("batch_size")} must be at least 1, got {BatchSize}");
        if (MicroBatchSize > BatchSize)
            throw new MolaException(n => $"{n("micro_batch_size")} ({MicroBatchSize}) is larger than {n("batch_size")} ({BatchSize}); the batch is made of micro-batches");
        if (BatchSize % MicroBatchSize != 0)
            throw new MolaException(n => $"{n("batch_size")} ({BatchSize}) must be a multiple of {n("micro_batch_size")} ({MicroBatchSize})");
        if (SaveSteps < 0) throw new MolaException(n => $"{n("save_steps")} must be 0 or more, got {SaveSteps}");
        if (SaveTotalLimit < 0) throw new MolaException(n => $"{n("save_total_limit")} must be 0 (keep all) or more, got {SaveTotalLimit}");
    }

    public int AccumulationSteps => BatchSize / MicroBatchSize;
}
