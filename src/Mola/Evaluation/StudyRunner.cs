using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;

namespace Mola.Evaluation;

/// <summary>One trained and scored run of a study: accuracies in percent.</summary>
public sealed record CellResult(string Variant, string Task, int Seed, int Epochs, double? ValidationAccuracy, double TestAccuracy,
    long TrainableParameters, double TrainSeconds);

/// <summary>Row <paramref name="Stage"/> of a continual-learning matrix R: accuracy (%) on every domain after training
/// through domain <paramref name="Domain"/>.</summary>
public sealed record StageResult(string Variant, int Seed, int Stage, string Domain, IReadOnlyList<double> Accuracy);

/// <summary>What a study run did: every cell scored (null when interrupted), and the report built from them.</summary>
public sealed record StudyOutcome(bool Interrupted, IReadOnlyList<CellResult> Cells, StudyReport? Report);

/// <summary>
/// Runs a <see cref="StudySpec"/>: each cell is an ordinary <see cref="TrainingRecipe"/> run in
/// OUT/VARIANT/TASK/seed-S/epochs-E, scored on validation and test, its result kept in that directory's
/// <c>cell.json</c>. Running the same spec again on the same output continues: finished cells are read back, a cell
/// with a checkpoint resumes from it (<c>--resume latest</c>), and a trained but unscored one is scored from its adapter.
/// </summary>
public sealed class StudyRunner(StudySpec spec, string output)
{
    public const string CellFile = "cell.json";
    public const string SpecCopy = "study-spec.txt";
    public Action<string> Log { get; init; } = _ => { };
    /// <summary>Called after each optimizer step of a cell (tests stop a study mid-cell with it).</summary>
    public Action<StepMetrics>? OnStep { get; init; }

    /// <summary>One training run of a study: an instruction stage (no task), a cell, or a continual-learning stage
    /// (<paramref name="Stage"/> its index in the sequence, starting from the adapter of the stage before).</summary>
    public sealed record PlannedRun(StudyVariant Variant, StudyTask? Task, int Seed, int Epochs, string Dir, int? Stage = null);

    /// <summary>Every training run of the study in order: instruction stages (transfer) first, then the cells, then
    /// the continual-learning stages.</summary>
    public IReadOnlyList<PlannedRun> Plan()
    {
        var plan = new List<PlannedRun>();
        if (spec.InstructionData is not null)
            foreach (var v in spec.Variants)
                foreach (int s in spec.Seeds)
                    plan.Add(new(v, null, s, spec.InstructionEpochs, InstructionDir(v, s)));
        foreach (var v in spec.Variants)
            foreach (var t in spec.Tasks)
                foreach (int s in spec.Seeds)
                    foreach (int e in spec.Epochs)
                        plan.Add(new(v, t, s, e, Path.Combine(output, v.Name, t.Name, $"seed-{s}", $"epochs-{e}")));
        if (spec.Continual is { } c)
            foreach (var v in spec.Variants)
                foreach (int s in spec.Seeds)
                    for (int k = 0; k < c.Domains.Count; k++)
                        plan.Add(new(v, c.Domains[k], s, c.Epochs, ContinualDir(v, s, k), k));
        return plan;
    }

    string ContinualDir(StudyVariant v, int seed, int stage) =>
        Path.Combine(output, v.Name, "continual", $"seed-{seed}", $"{stage + 1}-{spec.Continual!.Domains[stage].Name}");

    string InstructionDir(StudyVariant v, int seed) => Path.Combine(output, v.Name, "instruction", $"seed-{seed}");

    /// <summary>Per variant: its adapter built for the base model, its exact trainable parameter count and the
    /// training-memory estimate of one cell (from config.json alone: every allocation spec is checked here, before any run).</summary>
    public IReadOnlyList<(StudyVariant Variant, ParameterCounts Counts, MemoryPlan Memory)> Estimates()
    {
        var config = ModelConfig.Load(spec.BaseModel);
        return spec.Variants.Select(v =>
        {
            AdapterConfig a;
            try { a = v.Adapter.Build(config.NumHiddenLayers, spec.BaseModel); }
            catch (MolaException e) { throw new MolaException($"{spec.Path}: variant \"{v.Name}\": {e.Message}"); }
            var counts = a.CountParameters(config);
            var memory = MemoryPlan.Estimate(config, counts, TorchSharp.torch.ScalarType.Float32, spec.Training.MicroBatchSize, spec.Tokenize.CutoffLen,
                spec.Training.GradientCheckpointing, v.Adapter.Dropout);
            return (v, counts, memory);
        }).ToList();
    }

    public StudyOutcome Run(CancellationToken stop = default)
    {
        Estimates();
        foreach (var t in spec.Tasks.Concat(spec.Continual?.Domains ?? []))
            foreach (var file in new[] { t.Train, t.Validation, t.Test }.OfType<string>()) CheckRecords(file, t.Benchmark);
        Directory.CreateDirectory(output);
        using var studyLock = RunLock.Acquire(output, $"--output {output}");
        CheckSameSpec();
        var plan = Plan();
        var cells = new List<CellResult>();
        var stages = new List<StageResult>();
        var clock = Stopwatch.StartNew();
        int ranHere = 0;
        for (int i = 0; i < plan.Count; i++)
        {
            var (variant, task, seed, epochs, dir, stage) = plan[i];
            string what = task is null ? $"{variant.Name} instruction tuning seed {seed}"
                : stage is int k ? $"{variant.Name} continual stage {k + 1} ({task.Name}) seed {seed}"
                : $"{variant.Name} on {task.Name} seed {seed} epochs {epochs}";
            if (task is null ? RunDirectory.Finished(dir) : File.Exists(Path.Combine(dir, CellFile)))
            {
                if (stage is not null) stages.Add(Read<StageResult>(dir));
                else if (task is not null) cells.Add(Read<CellResult>(dir));
                continue;
            }
            string left = ranHere == 0 ? "" : $"; about {TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / ranHere * (plan.Count - i)):h\\:mm\\:ss} left";
            Log($"cell {i + 1} of {plan.Count}: {what}{left}");
            var init = task is null || spec.InstructionData is null ? null : InstructionDir(variant, seed);
            if (stage is int s) init = s == 0 ? null : ContinualDir(variant, seed, s - 1);
            if (!Train(plan[i], init, stop, out double seconds)) return new StudyOutcome(true, cells, null);
            ranHere++;
            if (task is null) continue;
            if (stage is int st) stages.Add(ScoreStage(plan[i], st));
            else cells.Add(ScoreCell(plan[i], seconds));
        }
        var report = StudyReport.Build(spec, cells, stages);
        report.Write(output);
        return new StudyOutcome(false, cells, report);
    }

    /// <summary>A study's directory holds one spec: the same study continues, another one is refused.</summary>
    void CheckSameSpec()
    {
        string copy = Path.Combine(output, SpecCopy);
        string text = File.ReadAllText(spec.Path);
        if (File.Exists(copy))
        {
            if (File.ReadAllText(copy) != text)
                throw new MolaException(n => $"{output}: holds a study of another spec ({SpecCopy} differs from {spec.Path}); give another {n("output")}");
        }
        else if (Directory.EnumerateFileSystemEntries(output).Any(e => Path.GetFileName(e) != RunLock.FileName))
            throw new MolaException(n => $"{output}: not empty and not a study; give another {n("output")}");
        else RunDirectory.WriteFile(copy, text);
    }

    static void CheckRecords(string file, Benchmark b)
    {
        var records = InstructionRecord.Load(file);
        if (records.Count == 0) throw new MolaException($"{file}: no records");
        foreach (var r in records) b.GoldLabel(r.Answer, r.Output, $"{file}:{r.Line}");
    }

    /// <summary>Trains one planned run unless its adapter is already saved; false when stopped (its checkpoint continues it).</summary>
    bool Train(PlannedRun p, string? initAdapter, CancellationToken stop, out double seconds)
    {
        seconds = 0;
        if (RunDirectory.Finished(p.Dir)) return true;
        var run = new RunDescription
        {
            BaseModel = spec.BaseModel,
            Data = p.Task?.Train ?? spec.InstructionData!,
            Output = p.Dir,
            Template = spec.Template,
            Training = spec.Training with { Seed = p.Seed, Epochs = p.Epochs },
            Tokenize = spec.Tokenize,
            Adapter = p.Variant.Adapter,
            InitAdapter = initAdapter,
            Resume = Checkpoints.Latest(p.Dir) is not null ? "latest" : null,
            Overwrite = true,   // what a killed run left before its first checkpoint is replaced
            CommandLine = $"mola experiment --spec {spec.Path}",
        };
        var recipe = new TrainingRecipe(run)
        {
            Log = line => { if (line.StartsWith("warning", StringComparison.Ordinal)) Log(line); },
            Progress = (_, loop) => loop(OnStep),
        };
        var result = recipe.Execute(stop);
        seconds = result.Train.Seconds;
        return !result.Train.Interrupted;
    }

    CellResult ScoreCell(PlannedRun p, double seconds)
    {
        var task = p.Task!;
        var (accuracy, trainable) = Score(p.Dir, task.Benchmark, task.Validation is string v ? [v, task.Test] : [task.Test]);
        var cell = new CellResult(p.Variant.Name, task.Name, p.Seed, p.Epochs, task.Validation is null ? null : accuracy[0], accuracy[^1], trainable, Math.Round(seconds, 2));
        RunDirectory.WriteFile(Path.Combine(p.Dir, CellFile), JsonSerializer.Serialize(cell, StudyReport.Json) + "\n");
        Log($"  {cell.Variant} {cell.Task} seed {cell.Seed} epochs {cell.Epochs}: validation {Percent(cell.ValidationAccuracy)}, test {cell.TestAccuracy:F2}% ({seconds:F0} s)");
        return cell;
    }

    /// <summary>After stage k every domain's test records are scored: row k of the matrix R.</summary>
    StageResult ScoreStage(PlannedRun p, int stage)
    {
        var domains = spec.Continual!.Domains;
        var (row, _) = Score(p.Dir, spec.Continual.Benchmark, domains.Select(d => d.Test).ToList());
        var result = new StageResult(p.Variant.Name, p.Seed, stage, p.Task!.Name, row);
        RunDirectory.WriteFile(Path.Combine(p.Dir, CellFile), JsonSerializer.Serialize(result, StudyReport.Json) + "\n");
        Log($"  {p.Variant.Name} seed {p.Seed} after {p.Task.Name}: {string.Join(" ", row.Select(x => x.ToString("F2", System.Globalization.CultureInfo.InvariantCulture)))}");
        return result;
    }

    static string Percent(double? v) => v is double x ? $"{x:F2}%" : "-";

    /// <summary>Accuracy (%) on each record file of the adapter a run saved, loaded as `mola eval` loads one (dropout
    /// off, LoRA merged): the same whether the run just trained or was trained before a kill. The model the recipe
    /// trained is not reused because its adapter layers are still in training mode there.</summary>
    (IReadOnlyList<double> Accuracy, long Trainable) Score(string dir, Benchmark benchmark, IReadOnlyList<string> files)
    {
        using var model = ModelLoader.Load(spec.BaseModel);
        var adapter = AdapterModel.LoadForInference(model, dir);
        long trainable = adapter.Config.CountParameters(model.Config).Total;
        var tok = MolaTokenizer.Load(spec.BaseModel, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
        var template = PromptTemplate.Load(spec.Template);
        var accuracy = files.Select(f => 100 * Evaluator.Run(model, tok, template, benchmark, InstructionRecord.Load(f), spec.Scoring).Metrics.Accuracy).ToList();
        return (accuracy, trainable);
    }

    static T Read<T>(string dir)
    {
        string path = Path.Combine(dir, CellFile);
        try { return JsonSerializer.Deserialize<T>(File.ReadAllText(path), StudyReport.Json) ?? throw new JsonException("null"); }
        catch (JsonException e) { throw new MolaException($"{path}: not a cell result ({e.Message}); delete it to run the cell again"); }
    }
}
