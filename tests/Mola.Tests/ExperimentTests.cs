using Mola.Adapters;
using Mola.Data;
using Mola.Evaluation;
using Mola.Models;
using Mola.Tokenization;
using Xunit;

namespace Mola.Tests;

/// <summary>`mola experiment`'s library side: the spec reader, the validation-based epoch choice, a two-cell study on the
/// tiny fixture model end to end, and resume after an interruption mid-study.</summary>
[Collection(RunsAloneCollection.Name)]   // a resumed study is compared with an uninterrupted one: both draw the global generator
public class ExperimentTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");
    static string Study(string file) => TestUtil.Fixture("study", file);

    static string TempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "mola-exp-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>Two variants (LoRA r4, MoLA 2 experts r4) x one task x one seed x the given epochs; 24 train records,
    /// batch 8: three steps an epoch.</summary>
    static string WriteSpec(string dir, string epochs = "[1]", int saveSteps = 0)
    {
        string path = Path.Combine(dir, "spec.yaml");
        File.WriteAllText(path, $"""
            base_model: {Llama}
            template: {Study("template.json")}
            scoring: likelihood
            seeds: [3]
            epochs: {epochs}
            training:
              learning_rate: 0.01
              warmup_steps: 0
              batch_size: 8
              micro_batch_size: 8
              save_steps: {saveSteps}
              train_on_inputs: false
            variants:
              - name: lora-r4
                kind: lora
                rank: 4
              - name: mola-2
                experts: 2
                rank: 4
            tasks:
              - name: words
                benchmark: openbookqa
                train: {Study("train.jsonl")}
                validation: {Study("validation.jsonl")}
                test: {Study("test.jsonl")}
            """);
        return path;
    }

    static string ErrorOf(string yaml)
    {
        string dir = TempDir();
        string path = Path.Combine(dir, "spec.yaml");
        File.WriteAllText(path, yaml);
        return Assert.Throws<MolaException>(() => StudySpec.Load(path)).Message;
    }

    [Fact]
    public void SpecErrorsNameTheFileLineAndKey()
    {
        string valid = File.ReadAllText(WriteSpec(TempDir()));
        string unknown = ErrorOf(valid.Replace("  - name: mola-2\n", "  - name: mola-2\n    expert: 2\n"));
        Assert.Matches(@"spec\.yaml:18: unknown key ""expert"" in variants\[1\] \(expected one of: name, kind, experts", unknown);
        Assert.Contains("spec.yaml:5: key \"epochs\": expected an integer, got \"ten\"", ErrorOf(valid.Replace("epochs: [1]", "epochs: [ten]")));
        Assert.Contains("missing key \"validation\": the epochs grid is searched on validation records, never on test",
            ErrorOf(valid.Replace("epochs: [1]", "epochs: [1, 2]").Replace($"    validation: {Study("validation.jsonl")}\n", "")));
        Assert.Contains("unknown task \"glue\"", ErrorOf(valid.Replace("benchmark: openbookqa", "benchmark: glue")));
        Assert.Contains("scoring: unknown mode \"best\"", ErrorOf(valid.Replace("scoring: likelihood", "scoring: best")));
        Assert.Contains("spec.yaml", ErrorOf(valid.Replace("seeds: [3]", "seeds: [3")));
        Assert.Contains("the name \"lora-r4\" is used twice", ErrorOf(valid.Replace("name: mola-2", "name: lora-r4")));
        Assert.Contains("spec.yaml:19: key \"pissa_iterations\" applies to init: pissa", ErrorOf(valid.Replace("    experts: 2\n", "    experts: 2\n    pissa_iterations: 4\n")));
        Assert.Contains("spec.yaml:20: pissa_iterations must be a number of subspace iterations (0 or more) or full, got \"some\"",
            ErrorOf(valid.Replace("    experts: 2\n", "    experts: 2\n    init: pissa\n    pissa_iterations: some\n")));
        Assert.Contains("init must be lora or pissa, got \"svd\"", ErrorOf(valid.Replace("    experts: 2\n", "    experts: 2\n    init: svd\n")));
        string dup = ErrorOf(valid.Replace("scoring: likelihood", "scoring: likelihood\nscoring: generate"));
        Assert.Contains("spec.yaml:4: ", dup);
        Assert.Contains("Duplicate key", dup);
    }

    [Fact]
    public void JsonSpecReadsTheSame()
    {
        string dir = TempDir();
        string path = Path.Combine(dir, "spec.json");
        File.WriteAllText(path, $$"""
            {"base_model": "{{Llama}}", "seeds": [0, 1], "epochs": [10, 15, 20],
             "variants": [{"name": "2468", "experts": "inverted-triangle"}],
             "tasks": [{"name": "SciQA", "benchmark": "scienceqa", "train": "t.jsonl", "validation": "v.jsonl", "test": "x.jsonl"}]}
            """);
        var spec = StudySpec.Load(path);
        Assert.Equal([10, 15, 20], spec.Epochs);
        Assert.Equal("inverted-triangle", spec.Variants[0].Adapter.Experts);
        Assert.Equal(Path.Combine(dir, "v.jsonl"), spec.Tasks[0].Validation);   // relative to the spec's directory
        Assert.Equal(Scoring.Generate, spec.Scoring);
    }

    [Fact]
    public void EpochsAreChosenOnValidationNeverOnTest()
    {
        // Seed 0: 15 epochs is best on validation (80) though 20 is best on test (95): 15 is chosen, its test 70 reported.
        // Seed 1: a validation tie between 10 and 20: the fewer epochs.
        CellResult C(int seed, int epochs, double val, double test) => new("v", "t", seed, epochs, val, test, 100, 1);
        var chosen = StudyReport.SelectEpochs([C(0, 10, 60, 90), C(0, 15, 80, 70), C(0, 20, 75, 95), C(1, 10, 50, 40), C(1, 20, 50, 99)]);
        Assert.Equal(2, chosen.Count);
        Assert.Equal((15, 70.0), (chosen.Single(c => c.Seed == 0).Epochs, chosen.Single(c => c.Seed == 0).TestAccuracy));
        Assert.Equal(10, chosen.Single(c => c.Seed == 1).Epochs);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void TwoCellStudyEndToEnd()
    {
        string dir = TempDir(), output = Path.Combine(dir, "study");
        var spec = StudySpec.Load(WriteSpec(dir));
        var outcome = new StudyRunner(spec, output).Run();
        Assert.False(outcome.Interrupted);
        Assert.Equal(2, outcome.Cells.Count);
        // Trainable parameters by hand for llama-tiny (3 layers, hidden 64, intermediate 160, all seven modules, r 4):
        // LoRA per layer 4 x 4(64+64) + 2 x 4(64+160) + 4(160+64) = 4,736, x 3 = 14,208. MoLA with 2 experts: twice
        // the LoRA pairs plus routers 2 x 64 for six modules and 2 x 160 for down_proj: (9,472 + 1,088) x 3 = 31,680.
        Assert.Equal(14_208, outcome.Cells.Single(c => c.Variant == "lora-r4").TrainableParameters);
        Assert.Equal(31_680, outcome.Cells.Single(c => c.Variant == "mola-2").TrainableParameters);

        // Each cell's test accuracy equals `mola eval`'s way of scoring the adapter it saved.
        var records = InstructionRecord.Load(Study("test.jsonl"));
        foreach (var cell in outcome.Cells)
        {
            using var model = ModelLoader.Load(Llama);
            AdapterModel.LoadForInference(model, Path.Combine(output, cell.Variant, "words", "seed-3", "epochs-1"));
            var tok = MolaTokenizer.Load(Llama, 1, 2);
            var r = Evaluator.Run(model, tok, PromptTemplate.Load(Study("template.json")), Benchmarks.Get("openbookqa"), records, Scoring.Likelihood);
            Assert.Equal(100 * r.Metrics.Accuracy, cell.TestAccuracy, 9);
        }
        foreach (var f in new[] { "results.csv", "results.json", "table.md", "accuracy_vs_parameters.png", "accuracy_per_task.png" })
            Assert.True(File.Exists(Path.Combine(output, f)), f);
        string table = File.ReadAllText(Path.Combine(output, "table.md"));
        var lora = outcome.Cells.Single(c => c.Variant == "lora-r4");
        Assert.Contains($"| lora-r4 | 14,208 | {lora.TestAccuracy:F2} | {lora.TestAccuracy:F2} |", table);
        Assert.Equal(3, File.ReadAllLines(Path.Combine(output, "results.csv")).Length);
        // The same spec on the same directory is a finished study: nothing is trained again.
        Assert.Equal(outcome.Cells, new StudyRunner(spec, output).Run().Cells);
    }

    /// <summary>Table 9's comparison as one spec: a MoLA variant and the same allocation with <c>init: pissa</c>. The PiSSA
    /// cell trains and scores (the parameter count is the same by hand: PiSSA changes the start, not the shape), its
    /// adapter stores the factors, and loaded as `mola eval` loads it (the residual rebuilt on a fresh base) it scores
    /// the cell's accuracy; without the residual the same experts give other scores.</summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void StudyWithAPissaVariant_TrainsScoresAndReloads()
    {
        string dir = TempDir(), output = Path.Combine(dir, "study");
        string yaml = File.ReadAllText(WriteSpec(dir)).Replace("  - name: lora-r4\n    kind: lora\n    rank: 4\n",
            "  - name: mola-2-pissa\n    experts: 2\n    rank: 4\n    init: pissa\n    pissa_iterations: 2\n");
        File.WriteAllText(Path.Combine(dir, "spec.yaml"), yaml);
        var spec = StudySpec.Load(Path.Combine(dir, "spec.yaml"));
        Assert.Equal(("pissa", 2), (spec.Variants[0].Adapter.Init, spec.Variants[0].Adapter.PissaIterations));
        var outcome = new StudyRunner(spec, output).Run();
        Assert.False(outcome.Interrupted);
        Assert.Equal(2, outcome.Cells.Count);
        Assert.All(outcome.Cells, c => Assert.Equal(31_680, c.TrainableParameters));   // TwoCellStudyEndToEnd's count by hand

        var cell = outcome.Cells.Single(c => c.Variant == "mola-2-pissa");
        string adapterDir = Path.Combine(output, cell.Variant, "words", "seed-3", "epochs-1");
        var config = AdapterConfig.Load(adapterDir);
        Assert.True(config.Pissa);
        Assert.Equal(2, config.PissaIterations);
        Assert.True(File.Exists(Path.Combine(adapterDir, AdapterFile.PissaFile)));
        Assert.False(AdapterConfig.Load(Path.Combine(output, "mola-2", "words", "seed-3", "epochs-1")).Pissa);

        var records = InstructionRecord.Load(Study("test.jsonl"));
        var tok = MolaTokenizer.Load(Llama, 1, 2);
        EvalResult Score(bool rebuild)
        {
            using var model = ModelLoader.Load(Llama);
            if (rebuild) AdapterModel.LoadForInference(model, adapterDir);
            else AdapterModel.Attach(model, config with { Pissa = false, LoraDropout = 0 }).LoadWeights(Path.Combine(adapterDir, AdapterFile.WeightsFile));
            return Evaluator.Run(model, tok, PromptTemplate.Load(Study("template.json")), Benchmarks.Get("openbookqa"), records, Scoring.Likelihood);
        }
        var reloaded = Score(rebuild: true);
        Assert.Equal(100 * reloaded.Metrics.Accuracy, cell.TestAccuracy, 9);
        // A second fresh load predicts the same, score for score; the experts alone (no residual) are another model.
        var again = Score(rebuild: true);
        Assert.Equal(reloaded.Predictions.Select(p => p.Predicted), again.Predictions.Select(p => p.Predicted));
        Assert.Equal(reloaded.Predictions.SelectMany(p => p.Scores!.Values), again.Predictions.SelectMany(p => p.Scores!.Values));
        var without = Score(rebuild: false).Predictions.SelectMany(p => p.Scores!.Values).ToList();
        Assert.True(reloaded.Predictions.SelectMany(p => p.Scores!.Values).Zip(without).Max(x => Math.Abs(x.First - x.Second)) > 1e-3);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void ResumeAfterAnInterruptionMidStudyEqualsAnUninterruptedStudy()
    {
        string dir = TempDir();
        var spec = StudySpec.Load(WriteSpec(dir, saveSteps: 1));
        string whole = Path.Combine(dir, "whole"), stopped = Path.Combine(dir, "stopped");
        var uninterrupted = new StudyRunner(spec, whole).Run();

        // Stop at the second step of the second cell (cell 1 has three steps), as Ctrl-C or SIGTERM does.
        using var stop = new CancellationTokenSource();
        int steps = 0;
        var first = new StudyRunner(spec, stopped) { OnStep = _ => { if (++steps == 5) stop.Cancel(); } }.Run(stop.Token);
        Assert.True(first.Interrupted);
        Assert.Single(first.Cells);
        string cell2 = Path.Combine(stopped, "mola-2", "words", "seed-3", "epochs-1");
        Assert.NotEmpty(Directory.GetDirectories(cell2, "checkpoint-*"));

        var resumed = new StudyRunner(spec, stopped).Run();
        Assert.False(resumed.Interrupted);
        static object Key(CellResult c) => (c.Variant, c.Task, c.Seed, c.Epochs, c.ValidationAccuracy, c.TestAccuracy, c.TrainableParameters);
        Assert.Equal(uninterrupted.Cells.Select(Key), resumed.Cells.Select(Key));
        foreach (var v in new[] { "lora-r4", "mola-2" })
        {
            // To float32 rounding, not bit for bit: one CI run of the whole suite once differed in the last bits of one tensor,
            // which neither this test alone nor the class reproduces. The cells' accuracies above are equal exactly. (A later
            // clean-clone run differed by 15% in an uninterrupted cell while another class drew from libtorch's global
            // generator in parallel, which initialisation and dropout use: hence this class runs alone.)
            string rel = Path.Combine(v, "words", "seed-3", "epochs-1", AdapterFile.WeightsFile);
            var (a, b) = (TestUtil.ReadAll(Path.Combine(whole, rel)), TestUtil.ReadAll(Path.Combine(stopped, rel)));
            Assert.Equal(a.Keys.Order(), b.Keys.Order());
            foreach (var name in a.Keys)
                Assert.True(TestUtil.RelDiff(b[name], a[name]) <= 1e-5, $"{v} {name}: relative difference {TestUtil.RelDiff(b[name], a[name])}");
        }

        // A cell killed after training but before its score was written is scored from its saved adapter.
        File.Delete(Path.Combine(cell2, StudyRunner.CellFile));
        var rescored = new StudyRunner(spec, stopped).Run();
        Assert.Equal(uninterrupted.Cells.Select(Key), rescored.Cells.Select(Key));

        // Another spec on the same directory is refused.
        File.AppendAllText(spec.Path, "\n# changed\n");
        var changed = StudySpec.Load(spec.Path);
        Assert.Contains("holds a study of another spec", Assert.Throws<MolaException>(() => new StudyRunner(changed, stopped).Run()).Message);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void ContinualLearningStagesGiveTheMatrixAndOpPd()
    {
        string dir = TempDir(), output = Path.Combine(dir, "study");
        string spec = File.ReadAllText(WriteSpec(dir));
        int tasksAt = spec.IndexOf("tasks:", StringComparison.Ordinal);
        spec = spec[..tasksAt].Replace("  - name: mola-2\n    experts: 2\n    rank: 4\n", "") + $"""
            continual:
              benchmark: openbookqa
              epochs: 1
              domains:
                - name: first
                  train: {Study("train.jsonl")}
                  test: {Study("test.jsonl")}
                - name: second
                  train: {Study("validation.jsonl")}
                  test: {Study("validation.jsonl")}
            """;
        string path = Path.Combine(dir, "continual.yaml");
        File.WriteAllText(path, spec);
        var outcome = new StudyRunner(StudySpec.Load(path), output).Run();
        var report = outcome.Report!;
        Assert.Equal(["first", "second"], report.Domains);
        var row = Assert.Single(report.Continual);

        // R by hand: each stage's saved adapter scored anew on both domains' test records.
        var template = PromptTemplate.Load(Study("template.json"));
        var files = new[] { Study("test.jsonl"), Study("validation.jsonl") };
        var r = new List<IReadOnlyList<double>>();
        foreach (var stage in new[] { "1-first", "2-second" })
        {
            using var model = ModelLoader.Load(Llama);
            AdapterModel.LoadForInference(model, Path.Combine(output, "lora-r4", "continual", "seed-3", stage));
            var tok = MolaTokenizer.Load(Llama, 1, 2);
            r.Add(files.Select(f => 100 * Evaluator.Run(model, tok, template, Benchmarks.Get("openbookqa"), InstructionRecord.Load(f), Scoring.Likelihood).Metrics.Accuracy).ToList());
        }
        Assert.Equal(r, row.R);
        Assert.Equal((r[1][0] + r[1][1]) / 2, row.OverallPerformance, 9);
        Assert.Equal(r[1][0] - r[0][0], row.PerformanceDrop, 9);
        Assert.Contains("Continual learning, lora-r4", File.ReadAllText(Path.Combine(output, "table.md")));
    }
}

/// <summary>`mola experiment` as a user runs it: bad specs are one error line, --dry-run lists the embedded study.</summary>
[Trait("Category", "Slow")]
public class ExperimentCliTests
{
    [Fact]
    public void BadSpecIsOneErrorLineNamingFileAndLine()
    {
        string dir = Path.Combine(Path.GetTempPath(), "mola-expcli-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        string spec = Path.Combine(dir, "s.yaml");
        File.WriteAllText(spec, "base_model: m\nseeds: [1]\nepochs: [1]\nvariant: []\n");
        Assert.Contains("s.yaml:4: unknown key \"variant\" in the study", CliRunner.Run("experiment", "--spec", spec).SingleErrorLine());
        Assert.Contains("nothing.yaml: not found", CliRunner.Run("experiment", "--spec", Path.Combine(dir, "nothing.yaml")).SingleErrorLine());
        Assert.False(Directory.Exists(Path.Combine(dir, "runs")));
    }

    [Fact]
    public void DryRunListsTheEmbeddedStudysCellsWithExactParameterCounts()
    {
        string dir = Path.Combine(Path.GetTempPath(), "mola-expcli-" + Guid.NewGuid().ToString("N"));
        var r = CliRunner.Run("experiment", "--dry-run", "--json", "--output", dir);
        Assert.Equal(0, r.ExitCode);
        var json = r.LastJson();
        Assert.Equal(16, json.GetProperty("cells").GetArrayLength());   // 4 variants x 2 tasks x 2 seeds x 1 epochs value
        // The embedded model (4 layers, hidden 128, intermediate 352, all seven modules): LoRA r40 per layer
        // 40 x (4 x 256 + 2 x 480 + 480) = 98,560, x 4 = 394,240; 20 experts of r 8 hold the same LoRA parameters plus
        // routers of 20 experts' rows over inputs 6 x 128 + 352 = 1,120 wide: 394,240 + 22,400 = 416,640.
        var variants = json.GetProperty("variants").EnumerateArray().ToDictionary(v => v.GetProperty("name").GetString()!, v => v.GetProperty("trainable_parameters").GetInt64());
        Assert.Equal(394_240, variants["lora-r40"]);
        Assert.Equal(416_640, variants["2468"]);
        Assert.Equal(416_640, variants["8642"]);
        Assert.False(Directory.Exists(dir));   // a dry run trains and writes nothing
    }
}
