using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Mola.Evaluation;

/// <summary>A pairwise Wilcoxon test between two variants, with its Benjamini-Hochberg adjusted p-value.</summary>
public sealed record PairTest(string A, string B, TestResult Test, double AdjustedP);

/// <summary>A variant's row of the table: test accuracy per task (mean over seeds, 95% interval), their average.</summary>
public sealed record VariantRow(string Variant, long TrainableParameters, IReadOnlyList<MeanInterval> Tasks, double Average);

/// <summary>A variant's continual-learning result: R (rows trained-on, columns tested-on, mean over seeds), OP and PD.</summary>
public sealed record ContinualRow(string Variant, IReadOnlyList<IReadOnlyList<double>> R, double OverallPerformance, double PerformanceDrop);

/// <summary>
/// A study's results: for every variant, task and seed the cell whose epochs scored best on validation (ties: fewer
/// epochs; no validation: the only epochs value), the Table 1 layout over those, and the paper's statistics: a Friedman
/// test across variants and pairwise Wilcoxon signed-rank tests, Benjamini-Hochberg corrected, over blocks that are
/// (task, seed) pairs, each variant's selected test accuracy in each block.
/// </summary>
public sealed record StudyReport(IReadOnlyList<string> Tasks, IReadOnlyList<CellResult> Cells, IReadOnlyList<CellResult> Selected,
    IReadOnlyList<VariantRow> Rows, TestResult? Friedman, IReadOnlyList<PairTest> Pairs)
{
    public IReadOnlyList<string> Domains { get; init; } = [];
    public IReadOnlyList<StageResult> Stages { get; init; } = [];
    public IReadOnlyList<ContinualRow> Continual { get; init; } = [];

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The cell of each (variant, task, seed) chosen on validation accuracy, never on test.</summary>
    public static IReadOnlyList<CellResult> SelectEpochs(IEnumerable<CellResult> cells) =>
        cells.GroupBy(c => (c.Variant, c.Task, c.Seed))
            .Select(g => g.OrderByDescending(c => c.ValidationAccuracy ?? 0).ThenBy(c => c.Epochs).First())
            .ToList();

    public static StudyReport Build(StudySpec spec, IReadOnlyList<CellResult> cells, IReadOnlyList<StageResult> stages)
    {
        var domains = spec.Continual?.Domains.Select(d => d.Name).ToList() ?? [];
        var continual = domains.Count == 0 ? [] : spec.Variants.Select(v =>
        {
            // R averaged over seeds; OP and PD are linear in R, so they equal the mean of the per-seed values.
            var r = Enumerable.Range(0, domains.Count).Select(k => (IReadOnlyList<double>)Enumerable.Range(0, domains.Count)
                .Select(i => stages.Where(x => x.Variant == v.Name && x.Stage == k).Average(x => x.Accuracy[i])).ToList()).ToList();
            return new ContinualRow(v.Name, r, ContinualMetrics.OverallPerformance(r), ContinualMetrics.PerformanceDrop(r));
        }).ToList();
        return BuildTable(spec, cells) with { Domains = domains, Stages = stages, Continual = continual };
    }

    static StudyReport BuildTable(StudySpec spec, IReadOnlyList<CellResult> cells)
    {
        var selected = SelectEpochs(cells);
        if (spec.Tasks.Count == 0) return new StudyReport([], cells, selected, [], null, []);
        var tasks = spec.Tasks.Select(t => t.Name).ToList();
        var variants = spec.Variants.Select(v => v.Name).ToList();
        double Score(string v, string t, int s) => selected.Single(c => c.Variant == v && c.Task == t && c.Seed == s).TestAccuracy;
        var rows = variants.Select(v =>
        {
            var perTask = tasks.Select(t => StudyStatistics.Interval(spec.Seeds.Select(s => Score(v, t, s)).ToList())).ToList();
            return new VariantRow(v, selected.First(c => c.Variant == v).TrainableParameters, perTask, perTask.Average(i => i.Mean));
        }).ToList();

        var blocks = tasks.SelectMany(t => spec.Seeds.Select(s => (t, s))).ToList();
        var scores = variants.ToDictionary(v => v, v => blocks.Select(b => Score(v, b.t, b.s)).ToList());
        TestResult? friedman = variants.Count >= 3
            ? StudyStatistics.Friedman(blocks.Select(b => (IReadOnlyList<double>)variants.Select(v => Score(v, b.t, b.s)).ToList()).ToList())
            : null;
        var pairs = new List<(string, string, TestResult)>();
        for (int i = 0; i < variants.Count; i++)
            for (int j = i + 1; j < variants.Count; j++)
                pairs.Add((variants[i], variants[j], StudyStatistics.Wilcoxon(scores[variants[i]], scores[variants[j]])));
        var q = StudyStatistics.BenjaminiHochberg(pairs.Select(p => p.Item3.PValue).ToList());
        return new StudyReport(tasks, cells, selected, rows, friedman, pairs.Select((p, k) => new PairTest(p.Item1, p.Item2, p.Item3, q[k])).ToList());
    }

    static string F(double v, string format = "F2") => v.ToString(format, CultureInfo.InvariantCulture);

    /// <summary>Table 1's layout: variants x tasks, mean over seeds with its 95% interval, parameters, the average.</summary>
    public string Table()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"| variant | params | {string.Join(" | ", Tasks)} | avg |");
        sb.AppendLine($"| --- | ---: | {string.Join(" | ", Tasks.Select(_ => "---:"))} | ---: |");
        foreach (var r in Rows)
            sb.AppendLine($"| {r.Variant} | {r.TrainableParameters.ToString("N0", CultureInfo.InvariantCulture)} | " +
                string.Join(" | ", r.Tasks.Select(i => i.HalfWidth is double h ? $"{F(i.Mean)} ± {F(h)}" : F(i.Mean))) + $" | {F(r.Average)} |");
        return sb.ToString();
    }

    /// <summary>The table, then the tests, in Markdown (table.md and what `mola experiment` prints).</summary>
    public string Markdown()
    {
        var sb = new StringBuilder();
        if (Rows.Count > 0)
        {
            sb.AppendLine("Test accuracy (%), mean over seeds ± 1.96 standard errors; epochs chosen on validation.");
            sb.AppendLine();
            sb.Append(Table());
            sb.AppendLine();
        }
        int blocks = Selected.Count / Math.Max(1, Rows.Count);
        if (Friedman is TestResult f)
            sb.AppendLine($"Friedman test across {Rows.Count} variants over {blocks} (task, seed) blocks: chi2 = {F(f.Statistic, "F3")}, p = {F(f.PValue, "G4")}");
        if (Pairs.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("| pair | Wilcoxon T | n | p | p (BH) |");
            sb.AppendLine("| --- | ---: | ---: | ---: | ---: |");
            foreach (var p in Pairs)
                sb.AppendLine($"| {p.A} vs {p.B} | {F(p.Test.Statistic, "G4")} | {p.Test.N} | {F(p.Test.PValue, "G4")} ({p.Test.Method}) | {F(p.AdjustedP, "G4")} |");
        }
        foreach (var c in Continual)
        {
            if (sb.Length > 0) sb.AppendLine();
            sb.AppendLine($"Continual learning, {c.Variant} (rows: trained through; columns: tested on; mean over seeds): " +
                $"OP {F(c.OverallPerformance)}, PD {F(c.PerformanceDrop)}");
            sb.AppendLine();
            sb.AppendLine($"| trained \\ tested | {string.Join(" | ", Domains)} |");
            sb.AppendLine($"| --- | {string.Join(" | ", Domains.Select(_ => "---:"))} |");
            for (int k = 0; k < Domains.Count; k++) sb.AppendLine($"| {Domains[k]} | {string.Join(" | ", c.R[k].Select(x => F(x)))} |");
        }
        return sb.ToString();
    }

    /// <summary>results.csv (every cell, the chosen ones marked), results.json, table.md and the figures.</summary>
    public void Write(string dir)
    {
        var csv = new StringBuilder("variant,task,seed,epochs,validation_accuracy,test_accuracy,trainable_parameters,train_seconds,selected\n");
        foreach (var c in Cells)
            csv.AppendLine(string.Join(",", c.Variant, c.Task, c.Seed, c.Epochs, c.ValidationAccuracy is double v ? F(v, "R") : "",
                F(c.TestAccuracy, "R"), c.TrainableParameters, F(c.TrainSeconds, "R"), Selected.Contains(c) ? "true" : "false"));
        Training.RunDirectory.WriteFile(Path.Combine(dir, "results.csv"), csv.ToString());
        Training.RunDirectory.WriteFile(Path.Combine(dir, "results.json"), JsonSerializer.Serialize(this, Json) + "\n");
        Training.RunDirectory.WriteFile(Path.Combine(dir, "table.md"), Markdown());
        if (Rows.Count > 0) StudyFigures.Write(this, dir);
    }
}
