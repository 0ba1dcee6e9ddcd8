using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Data;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>
/// Everything a training run is: its paths, the optimisation, the tokenisation and the adapter asked for. The CLI
/// maps its options to one; <see cref="TrainingRecipe"/> runs it; <see cref="TrainingArgs"/> is its record in the
/// output directory (<c>training_args.json</c>).
/// </summary>
public sealed record RunDescription
{
    public required string BaseModel { get; init; }
    /// <summary>Training records (JSON array or JSONL).</summary>
    public required string Data { get; init; }
    public required string Output { get; init; }
    /// <summary><c>alpaca</c>, or a template JSON file.</summary>
    public string Template { get; init; } = "alpaca";
    public TrainingOptions Training { get; init; } = new();
    public TokenizeOptions Tokenize { get; init; } = new();
    public AdapterSpec Adapter { get; init; } = new();
    /// <summary>Start from this trained adapter (its own experts, top-k, rank and targets); <see cref="Adapter"/> is then unused.</summary>
    public string? InitAdapter { get; init; }
    /// <summary>Records held out (seeded) for the evaluation loss.</summary>
    public int ValSetSize { get; init; }
    /// <summary>A checkpoint directory, or <c>latest</c> (the newest in <see cref="Output"/>); null: a new run.</summary>
    public string? Resume { get; init; }
    /// <summary>Replace a run already in <see cref="Output"/> (kept aside until this one finishes).</summary>
    public bool Overwrite { get; init; }
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>The adapter's products over a bfloat16/float16 base (<see cref="Adapters.AdapterPrecision"/>).</summary>
    public AdapterPrecision AdapterPrecision { get; init; } = AdapterPrecision.Mixed;
    public Device? Device { get; init; }
    /// <summary>Also report metrics to TensorBoard (event files under <c>OUTPUT/tensorboard/</c>).</summary>
    public bool TensorBoard { get; init; }
    /// <summary>Train even when the memory plan says the run does not fit (the plan is an estimate).</summary>
    public bool SkipMemoryCheck { get; init; }
    /// <summary>How the run was asked for, recorded as it was given.</summary>
    public string CommandLine { get; init; } = "";

    /// <summary>The values that need no file; every input file is checked next, by the recipe, before anything is touched.</summary>
    public void Validate()
    {
        Training.Validate();
        Adapter.Validate();
        if (Tokenize.CutoffLen < 1) throw new MolaException(n => $"{n("cutoff_len")} must be at least 1, got {Tokenize.CutoffLen}");
        if (ValSetSize < 0) throw new MolaException(n => $"{n("val_set_size")} must be 0 or more, got {ValSetSize}");
    }

    /// <summary><c>training_args.json</c>: this run with the adapter it trains (<paramref name="adapter"/>: the spec built
    /// for the model, or the initial adapter's own), and what follows from its data (<paramref name="trainExamples"/>,
    /// <paramref name="totalSteps"/>). A resume compares it with the checkpoint's run's (<see cref="CheckResumes"/>).</summary>
    public string TrainingArgs(AdapterConfig adapter, int trainExamples, long totalSteps)
    {
        var (o, t) = (Training, Tokenize);
        var args = new JsonObject
        {
            ["base_model"] = BaseModel,
            ["data"] = Data,
            ["adapter_kind"] = adapter.Kind.Name(),
            ["num_experts"] = Array(adapter.NumExperts),
            ["top_k"] = Array(adapter.TopK),
            ["rank"] = Array(adapter.Rank),
            ["lora_alpha"] = adapter.LoraAlpha,
            ["lora_dropout"] = adapter.LoraDropout,
            ["target_modules"] = new JsonArray(adapter.TargetModules.Select(x => (JsonNode)x!).ToArray()),
            ["aux_loss_coef"] = adapter.AuxLossCoef,
            ["init"] = adapter.Pissa ? "pissa" : "lora",
            // What the adapter computed: over a float32 base mixed is float32, so a resume may give either.
            ["adapter_precision"] = AdapterPrecision.Effective(DType).Name(),
            ["pissa_iterations"] = adapter.PissaIterations,
            ["learning_rate"] = o.LearningRate,
            ["warmup_steps"] = o.WarmupSteps,
            ["epochs"] = o.Epochs,
            ["max_steps"] = o.MaxSteps,
            ["batch_size"] = o.BatchSize,
            ["micro_batch_size"] = o.MicroBatchSize,
            ["max_grad_norm"] = o.MaxGradNorm,
            ["cutoff_len"] = t.CutoffLen,
            ["add_eos"] = t.AddEos,
            ["train_on_inputs"] = t.TrainOnInputs,
            ["group_by_length"] = o.GroupByLength,
            ["gradient_checkpointing"] = o.GradientCheckpointing,
            ["save_steps"] = o.SaveSteps,
            ["save_total_limit"] = o.SaveTotalLimit,
            ["seed"] = o.Seed,
            ["train_examples"] = trainExamples,
            ["total_steps"] = totalSteps,
            ["command_line"] = CommandLine,
        };
        return args.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    /// <summary>The adapter's structure: another value builds other tensors.</summary>
    static readonly string[] AdapterShape = ["adapter_kind", "num_experts", "rank", "target_modules", "init"];
    /// <summary>The adapter's other settings: the same tensors, trained differently.</summary>
    static readonly string[] AdapterTraining = ["top_k", "lora_alpha", "lora_dropout", "aux_loss_coef"];
    /// <summary>What else a resumed run must repeat to continue the interrupted one exactly: its batches, data and
    /// schedule. Paths (a model or data set may move), checkpoint policy and gradient checkpointing may change.</summary>
    static readonly string[] Continuation = ["batch_size", "micro_batch_size", "train_examples", "total_steps", "seed", "group_by_length",
        "learning_rate", "warmup_steps", "max_grad_norm", "cutoff_len", "add_eos", "train_on_inputs"];

    /// <summary>Refuses to resume checkpoint <paramref name="dir"/>, whose run record is <paramref name="saved"/>, with
    /// this run (<paramref name="now"/>, <see cref="TrainingArgs"/> parsed) unless every setting that shapes the
    /// continuation is the same. Keys the saved record lacks (a checkpoint from before they were recorded) are not compared.</summary>
    public static void CheckResumes(string dir, JsonObject saved, JsonObject now)
    {
        bool Differs(string key) => saved.ContainsKey(key) && saved[key]?.ToJsonString() != now[key]?.ToJsonString();
        if (AdapterShape.Any(Differs))
            throw new MolaException($"{dir}: the checkpoint's adapter (experts, rank, targets or init) differs from this run's");
        if (AdapterTraining.Any(Differs))
            throw new MolaException($"{dir}: the checkpoint's top-k, alpha, dropout or aux-loss coefficient differs from this run's " +
                "(a resumed run continues the same training; start a new run instead of resuming)");
        // A record from before the setting existed: its adapter computed in float32, whatever the base dtype.
        string savedPrecision = saved["adapter_precision"]?.GetValue<string>() ?? AdapterPrecision.Float32.Name();
        if (now["adapter_precision"]?.GetValue<string>() is string nowPrecision && nowPrecision != savedPrecision)
            throw new MolaException(n => $"{dir}: the checkpoint was trained with {n("adapter_precision")} {savedPrecision}, this run's is {nowPrecision} " +
                $"(a resumed run continues the same training: give {n("adapter_precision")} {savedPrecision}, or start a new run)");
        if (Continuation.FirstOrDefault(Differs) is string key)
            throw new MolaException($"{dir}: this run's {key} is {now[key]?.ToJsonString() ?? "unset"}, the checkpoint's {saved[key]?.ToJsonString()} " +
                "(a resumed run must repeat the interrupted one's batch, data, schedule and seed; start a new run instead of resuming)");
    }

    static JsonArray Array(int[] values) => new(values.Select(x => (JsonNode)x!).ToArray());
}
