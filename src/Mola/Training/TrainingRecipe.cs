using System.Globalization;
using Mola.Adapters;
using Mola.Data;
using Mola.Distributed;
using Mola.Models;
using Mola.Platform;
using Mola.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>
/// A training run from its <see cref="RunDescription"/>, set-up and loop (as a torchtune recipe): every value, then
/// every input file, then whether the adapter fits in memory, all before anything is touched; then the output
/// directory is locked and tidied, a resume resolved, the model loaded and the adapter attached or loaded; a previous
/// run in the directory steps aside only just before the first step, and comes back unless this run finishes.
/// What the CLI, the embedded default and the tools call to train.
/// </summary>
public sealed class TrainingRecipe(RunDescription run)
{
    public RunDescription Run { get; } = run;
    /// <summary>Human-readable lines: what was loaded, warnings, checkpoints, the result.</summary>
    public Action<string> Log { get; init; } = _ => { };
    /// <summary>Wraps the loop (a progress display): gets the run's total steps and the loop, which takes a per-step callback.</summary>
    public Func<long, Func<Action<StepMetrics>?, TrainResult>, TrainResult> Progress { get; init; } = (_, loop) => loop(null);
    /// <summary>How the log lines and the errors written here name a setting, given its key (<c>warmup_steps</c>); the
    /// CLI writes its option (<c>--warmup-steps</c>).</summary>
    public Func<string, string> SettingName { get; init; } = key => key;
    /// <summary>Called with the model once it is ready, before the first step (the embedded default measures accuracy here).</summary>
    public Action<RecipeModel>? BeforeTraining { get; init; }
    /// <summary>Called with the trained model after the adapter is saved.</summary>
    public Action<RecipeModel>? AfterTraining { get; init; }
    /// <summary>Under mpirun (<see cref="DataParallel.Start"/>): rank 0 alone locks, tidies and writes the output
    /// directory; the other ranks only read it (a resume).</summary>
    public DataParallel? Parallel { get; init; }

    public RecipeResult Execute(CancellationToken stop = default)
    {
        var r = Run;
        r.Validate();
        string outDir = r.Output;
        var config = ModelConfig.Load(r.BaseModel);
        var adapterConfig = r.InitAdapter is string init ? AdapterConfig.Load(init) : r.Adapter.Build(config.NumHiddenLayers, r.BaseModel, Log);
        adapterConfig = adapterConfig.ForModel(config.NumHiddenLayers);
        adapterConfig.Validate("adapter", config.NumHiddenLayers);
        CheckFitsInMemory(config, adapterConfig);
        var tmpl = PromptTemplate.Load(r.Template);
        var records = InstructionRecord.Load(r.Data);
        var (trainRecords, valRecords) = InstructionDataset.Split(records, r.ValSetSize, r.Training.Seed);
        var tok = MolaTokenizer.Load(r.BaseModel, config.BosTokenId, config.EosTokenId, config.VocabSize);
        var tokenize = r.Tokenize;
        if (tokenize.CutoffLen > config.MaxPositionEmbeddings)
            Log($"warning: {SettingName("cutoff_len")} {tokenize.CutoffLen} is past the model's {config.MaxPositionEmbeddings} positions (max_position_embeddings): " +
                "longer examples train on positions the model never saw");
        var trainSet = InstructionDataset.Create(trainRecords, tmpl, tok, tokenize);
        var valSet = valRecords.Count > 0 ? InstructionDataset.Create(valRecords, tmpl, tok, tokenize) : null;

        // One writer per run directory, from here to the end; then what a killed run left is sorted out.
        bool writes = Parallel?.IsRoot ?? true;
        using var runLock = writes ? RunLock.Acquire(outDir, $"{SettingName("output")} {outDir}") : null;
        bool movedAside = false;
        try
        {
            if (writes)
                foreach (var line in RunDirectory.Tidy(outDir, resuming: r.Resume is not null, SettingName)) Log(line);
            bool replacing = writes && CheckOutput(outDir, r.Resume is not null, r.Overwrite);
            string? resumeDir = r.Resume is null ? null
                : r.Resume == "latest" ? Checkpoints.Latest(outDir) ?? throw new MolaException($"{outDir}: no checkpoint to resume from")
                : r.Resume;

            using var model = ModelLoader.Load(r.BaseModel, r.DType, r.Device ?? CPU, Log);
            torch.manual_seed(r.Training.Seed);
            var adapter = r.InitAdapter is string initDir ? AdapterModel.Load(model, initDir) : AdapterModel.Attach(model, adapterConfig);
            adapter.SetPrecision(r.AdapterPrecision);
            // A new PiSSA run decomposes the base; a resumed one rebuilds the residual from the checkpoint's factors
            // (the experts' weights come from the checkpoint too). An initial adapter brought its own (Load).
            if (adapterConfig.Pissa && r.InitAdapter is null)
            {
                int k = adapterConfig.PissaIterations;
                if (resumeDir is null)
                    Log($"PiSSA: decomposing {adapter.Modules.Count} weight matrices (" + (k == 0
                        ? "the exact float64 SVD of each: over 10 minutes for a 1.1B model on 2 cores)"
                        : $"the top-r triplets of each by a randomized float64 SVD with {k} subspace iterations)"));
                var clock = System.Diagnostics.Stopwatch.StartNew();
                adapter.InitPissa(resumeDir, (done, all) =>
                {
                    if (done == all || done % Math.Max(1, all / 10) == 0) Log($"PiSSA {done}/{all} matrices, {clock.Elapsed.TotalSeconds:F1} s");
                });
            }
            long trainable = adapter.parameters().Sum(t => t.numel());
            Log($"base {r.BaseModel} ({config.ModelType}, {config.NumHiddenLayers} layers), data {r.Data}: {trainSet.Count} train / {valSet?.Count ?? 0} validation records");
            Log(AdapterSummary(adapter.Config, trainable));
            var ready = new RecipeModel(model, tok, tmpl, adapter);
            BeforeTraining?.Invoke(ready);

            // The previous run steps aside only now, when everything above has loaded, and comes back unless this run finishes.
            if (replacing) movedAside = RunDirectory.MoveAside(outDir);
            var options = r.Training;
            var trainer = new Trainer(adapter, trainSet, valSet, options, outDir) { Parallel = Parallel };
            if (movedAside) trainer.FailureNote = $"this run is discarded and the run it was to replace is restored in {outDir}";
            if (options.WarmupSteps >= trainer.TotalSteps)
            {
                double peak = options.LearningRate * LrSchedule.Factor(trainer.TotalSteps - 1, options.WarmupSteps, trainer.TotalSteps);   // still rising at the last step
                var n = SettingName;
                Log($"warning: {n("warmup_steps")} {options.WarmupSteps} is not below the run's {trainer.TotalSteps} optimizer steps, so the learning rate " +
                    $"peaks at {peak:G3} instead of {options.LearningRate:G3} (fewer {n("warmup_steps")}, a smaller {n("batch_size")} or more {n("epochs")})");
            }
            trainer.RunRecord = r.TrainingArgs(adapter.Config, trainSet.Count, trainer.TotalSteps);
            if (writes) trainer.OnStart = () =>
            {
                Directory.CreateDirectory(outDir);
                RunDirectory.WriteFile(Path.Combine(outDir, Checkpoints.RunRecordFile), trainer.RunRecord);
            };
            trainer.Log = Log;
            using var lossCurve = new Monitoring.LossCurve(outDir);
            using var tensorBoard = writes && r.TensorBoard ? new Monitoring.TensorBoardSink(outDir, adapter) : null;
            trainer.Sinks.Add(lossCurve);
            if (tensorBoard is not null) trainer.Sinks.Add(tensorBoard);
            var result = Progress(trainer.TotalSteps, onStep =>
            {
                trainer.OnStep = onStep;
                return trainer.Train(resumeDir, stop);
            });
            if (result.Interrupted)
            {
                if (result.Checkpoint is null && movedAside) RunDirectory.Restore(outDir);   // nothing of this run to continue
                return new RecipeResult(result, trainable, movedAside);
            }
            if (writes) RunDirectory.Commit(outDir);   // finished: the run it replaced goes
            string trained = result.StartStep > 0
                ? $"trained steps {result.StartStep + 1} to {result.Steps} ({result.Steps - result.StartStep} after resuming at step {result.StartStep})"
                : $"trained {result.Steps} steps";
            Log($"{trained} in {result.Seconds:F1} s; final loss {result.FinalLoss:F4}" + (result.EvalLoss is double ev ? $", eval loss {ev:F4}" : "") + $"; adapter saved to {outDir}");
            ready.Adapter.eval();   // scored as mola eval scores: the adapter's dropout off (Model.eval() does not reach it)
            AfterTraining?.Invoke(ready);
            return new RecipeResult(result, trainable, movedAside);
        }
        catch when (movedAside || runLock?.CreatedDirectory == true)
        {
            if (movedAside) RunDirectory.Restore(outDir);
            runLock!.RemoveIfEmpty();
            throw;
        }
    }

    /// <summary>Refuses to mix two runs in one directory unless asked to replace it or to resume. Moves nothing: returns
    /// whether there is a run to replace, so that it steps aside only after every input has loaded.</summary>
    static bool CheckOutput(string dir, bool resuming, bool overwrite)
    {
        var entries = RunDirectory.Entries(dir);
        if (entries.Count == 0 || resuming) return false;
        if (!overwrite)
            throw new MolaException(n => $"{dir}: holds another run ({entries[0]}); use {n("overwrite")} to replace it, {n("resume")} latest to continue it, or another {n("output")}");
        return true;
    }

    /// <summary>What to change when the run does not fit, in the caller's words (the CLI names its options).</summary>
    public string MemoryAdvice { get; init; } =
        "a smaller micro-batch size, gradient checkpointing, a bfloat16 base, a shorter cutoff length, fewer experts or a lower rank (or skip the memory check)";

    /// <summary>Refuses, before the model loads, a run whose planned peak memory (<see cref="MemoryPlan"/>) is more than
    /// this machine has available: it would otherwise be killed mid-run, or fail deep inside libtorch.</summary>
    void CheckFitsInMemory(ModelConfig config, AdapterConfig a)
    {
        if ((Run.Device ?? CPU).type != DeviceType.CPU) return;   // the device's memory is not known here
        var plan = MemoryPlan.Estimate(config, a.CountParameters(config), Run.DType, Run.Training.MicroBatchSize, Run.Tokenize.CutoffLen,
            Run.Training.GradientCheckpointing, a.LoraDropout);
        var available = AvailableMemory.Read();
        if (plan.TotalBytes <= available.Bytes) return;
        string why = $"training needs about {MemoryPlan.GiB(plan.TotalBytes)} at its peak, more than the {MemoryPlan.GiB(available.Bytes)} " +
            $"{available.Source} (micro-batch {plan.MicroBatchSize} x {plan.SequenceLength} tokens, base {plan.BaseDType}, gradient checkpointing " +
            $"{(plan.GradientCheckpointing ? "on" : "off")})";
        if (Run.SkipMemoryCheck) Log($"warning: {why}; training anyway, as asked (the plan: {plan.Summary()})");
        else throw new MolaException($"{why}: try {MemoryAdvice}");
    }

    /// <summary>One line: kind, allocation (value x layers) and trainable parameters; LoRA has no experts or top-k.</summary>
    static string AdapterSummary(AdapterConfig a, long trainable)
    {
        string rank = $"rank {ExpertAllocation.Describe(a.Rank)}";
        string shape = a.Kind == AdapterKind.Mola
            ? $"experts {ExpertAllocation.Describe(a.NumExperts)}; top-k {ExpertAllocation.Describe(a.TopK)}; {rank}"
            : rank;
        return $"adapter {a.Kind.Name()}: {shape} (value x layers); {trainable:N0} trainable parameters";
    }
}
