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

    /// <summary>Every training run of the study in order: instruction stages (transfer) first, then the cells.</summary>
    public IReadOnlyList<(StudyVariant Variant, StudyTask? Task, int Seed, int Epochs, string Dir)> Plan()
    {
        var plan = new List<(StudyVariant, StudyTask?, int, int, string)>();
        if (spec.InstructionData is not null)
            foreach (var v in spec.Variants)
                foreach (int s in spec.Seeds)
                    plan.Add((v, null, s, spec.InstructionEpochs, InstructionDir(v, s)));
        foreach (var v in spec.Variants)
            foreach (var t in spec.Tasks)
                foreach (int s in spec.Seeds)
                    foreach (int e in spec.Epochs)
                        plan.Add((v, t, s, e, Path.Combine(output, v.Name, t.Name, $"seed-{s}", $"epochs-{e}")));
        return plan;
    }

    string InstructionDir(StudyVariant v, int seed) => Path.Combine(output, v.Name, "instruction", $"seed-{seed}");

    /// <summary>Per variant: its adapter built for the base model, its exact trainable parameter count and the
    /// training-memory estimate of one cell (from config.json alone: every allocation spec is checked here, before any run).</summary>
    public IReadOnlyList<(StudyVariant Variant, ParameterCounts Counts, MemoryEstimate Memory)> Estimates()
    {
        var config = ModelConfig.Load(spec.BaseModel);
        return spec.Variants.Select(v =>
        {
            AdapterConfig a;
            try { a = v.Adapter.Build(config.NumHiddenLayers, spec.BaseModel); }
            catch (MolaException e) { throw new MolaException($"{spec.Path}: variant \"{v.Name}\": {e.Message}"); }
            var counts = a.CountParameters(config);
            var memory = ParameterCount.EstimateTrainingMemory(config, counts, TorchSharp.torch.ScalarType.Float32, spec.Training.MicroBatchSize, spec.Tokenize.CutoffLen);
            return (v, counts, memory);
        }).ToList();
    }

    public StudyOutcome Run(CancellationToken stop = default)
    {
        Estimates();
        foreach (var t in spec.Tasks)
            foreach (var file in new[] { t.Train, t.Validation, t.Test }.OfType<string>()) CheckRecords(file, t.Benchmark);
        Directory.CreateDirectory(output);
        using var studyLock = RunLock.Acquire(output, $"--output {output}");
        CheckSameSpec();
        var plan = Plan();
        var cells = new List<CellResult>();
        var clock = Stopwatch.StartNew();
        int ranHere = 0;
        for (int i = 0; i < plan.Count; i++)
        {
            var (variant, task, seed, epochs, dir) = plan[i];
            string what = task is null ? $"{variant.Name} instruction tuning seed {seed}" : $"{variant.Name} on {task.Name} seed {seed} epochs {epochs}";
            if (task is null ? RunDirectory.Finished(dir) : File.Exists(Path.Combine(dir, CellFile)))
            {
                if (task is not null) cells.Add(ReadCell(dir));
                continue;
            }
            string left = ranHere == 0 ? "" : $"; about {TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / ranHere * (plan.Count - i)):h\\:mm\\:ss} left";
            Log($"cell {i + 1} of {plan.Count}: {what}{left}");
            var cell = RunCell(variant, task, seed, epochs, dir, stop);
            ranHere++;
            if (cell is null && stop.IsCancellationRequested) return new StudyOutcome(true, cells, null);
            if (cell is not null) cells.Add(cell);
        }
        var report = StudyReport.Build(spec, cells);
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
                throw new MolaException($"{output}: holds a study of another spec ({SpecCopy} differs from {spec.Path}); give another --output");
        }
        else if (Directory.EnumerateFileSystemEntries(output).Any(e => Path.GetFileName(e) != RunLock.FileName))
            throw new MolaException($"{output}: not empty and not a study; give another --output");
        else RunDirectory.WriteFile(copy, text);
    }

    static void CheckRecords(string file, Benchmark b)
    {
        var records = InstructionRecord.Load(file);
        if (records.Count == 0) throw new MolaException($"{file}: no records");
        foreach (var r in records) b.GoldLabel(r.Answer, r.Output, $"{file}:{r.Line}");
    }

    CellResult? RunCell(StudyVariant variant, StudyTask? task, int seed, int epochs, string dir, CancellationToken stop)
    {
        double seconds = 0;
        if (!RunDirectory.Finished(dir))
        {
            var run = new RunDescription
            {
                BaseModel = spec.BaseModel,
                Data = task?.Train ?? spec.InstructionData!,
                Output = dir,
                Template = spec.Template,
                Training = spec.Training with { Seed = seed, Epochs = epochs },
                Tokenize = spec.Tokenize,
                Adapter = variant.Adapter,
                InitAdapter = task is not null && spec.InstructionData is not null ? InstructionDir(variant, seed) : null,
                Resume = Checkpoints.Latest(dir) is not null ? "latest" : null,
                Overwrite = true,   // what a killed cell left before its first checkpoint is replaced
                CommandLine = $"mola experiment --spec {spec.Path}",
            };
            var recipe = new TrainingRecipe(run)
            {
                Log = line => { if (line.StartsWith("warning", StringComparison.Ordinal)) Log(line); },
                Progress = (_, loop) => loop(OnStep),
            };
            var result = recipe.Execute(stop);
            if (result.Train.Interrupted) return null;
            seconds = result.Train.Seconds;
        }
        if (task is null) return null;
        var (validation, test, trainable) = Score(dir, task);
        var cell = new CellResult(variant.Name, task.Name, seed, epochs, validation, test, trainable, Math.Round(seconds, 2));
        RunDirectory.WriteFile(Path.Combine(dir, CellFile), JsonSerializer.Serialize(cell, StudyReport.Json) + "\n");
        Log($"  {cell.Variant} {cell.Task} seed {seed} epochs {epochs}: validation {Percent(cell.ValidationAccuracy)}, test {cell.TestAccuracy:F2}% ({seconds:F0} s)");
        return cell;
    }

    static string Percent(double? v) => v is double x ? $"{x:F2}%" : "-";

    /// <summary>Validation and test accuracy (%) of the adapter a cell saved, loaded as `mola eval` loads one (dropout
    /// off, LoRA merged): the same whether the cell just trained or was trained before a kill. The model the recipe
    /// trained is not reused because its adapter layers are still in training mode there.</summary>
    (double? Validation, double Test, long Trainable) Score(string dir, StudyTask task)
    {
        using var model = ModelLoader.Load(spec.BaseModel);
        var adapter = AdapterModel.LoadForInference(model, dir);
        long trainable = adapter.Config.CountParameters(model.Config).Total;
        var tok = MolaTokenizer.Load(spec.BaseModel, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
        var template = PromptTemplate.Load(spec.Template);
        double Accuracy(string file) =>
            100 * Evaluator.Run(model, tok, template, task.Benchmark, InstructionRecord.Load(file), spec.Scoring).Metrics.Accuracy;
        return (task.Validation is string v ? Accuracy(v) : null, Accuracy(task.Test), trainable);
    }

    static CellResult ReadCell(string dir)
    {
        string path = Path.Combine(dir, CellFile);
        try { return JsonSerializer.Deserialize<CellResult>(File.ReadAllText(path), StudyReport.Json) ?? throw new JsonException("null"); }
        catch (JsonException e) { throw new MolaException($"{path}: not a cell result ({e.Message}); delete it to run the cell again"); }
    }
}
