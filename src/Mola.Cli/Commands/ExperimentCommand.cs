using System.CommandLine;
using System.Globalization;
using Mola.Evaluation;

namespace Mola.Cli.Commands;

/// <summary><c>mola experiment</c>: a study from a spec (variants x tasks x seeds x epochs), or the embedded default study.</summary>
public static class ExperimentCommand
{
    /// <summary>The embedded default study's spec (assets/study-tasks/study.yaml, copied next to the program).</summary>
    public static string DefaultSpec => Path.Combine(AppContext.BaseDirectory, "assets", "study-tasks", "study.yaml");

    public static Command Create()
    {
        var spec = new Option<string?>("--spec") { Description = "Study spec, YAML or JSON (README: the format). Without it: the embedded default study" };
        var output = new Option<string?>("--output")
        {
            Description = "Study directory: one mola train run per cell, results.csv, results.json, table.md, figures. Running the same " +
                "spec on it again continues a stopped study. Default: runs/experiment-<time>, or runs/default-study for the embedded study",
        };
        var dryRun = new Option<bool>("--dry-run") { Description = "Print the cells and each variant's trainable parameters and memory estimate; train nothing" };
        var json = Cli.JsonOption();
        var cmd = new Command("experiment", "Train and score every variant x task x seed x epochs cell of a study (the paper's Table 1), choose " +
            "the epochs on validation, and report test accuracy with 95% intervals, a Friedman test and pairwise Wilcoxon tests (FDR corrected)")
        { spec, output, dryRun, json };
        bool interrupted = false;
        cmd.SetAction(p =>
        {
            using var interruption = new Interruption();
            int exit = Cli.Run(p, json, o => Run(p, o, interruption));
            return interruption.ExitCode is int signalled && exit == 0 && interrupted ? signalled : exit;
        });
        return cmd;

        object? Run(ParseResult p, Output o, Interruption interruption)
        {
            string? given = p.GetValue(spec);
            var study = StudySpec.Load(given ?? DefaultSpec);
            string outDir = Cli.OutputDirectory(p.GetValue(output) ?? (given is null ? Path.Combine("runs", "default-study")
                : Path.Combine("runs", "experiment-" + DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture))), "--output");
            var runner = new StudyRunner(study, outDir) { Log = o.Line };
            var estimates = runner.Estimates();
            var plan = runner.Plan();
            if (p.GetValue(dryRun))
            {
                foreach (var (v, counts, memory) in estimates)
                    o.Line($"{v.Name}: {counts.Total:N0} trainable parameters; training memory about {memory.TotalBytes / (1024.0 * 1024 * 1024):F2} GiB");
                for (int i = 0; i < plan.Count; i++)
                {
                    var c = plan[i];
                    long n = estimates.First(e => e.Variant == c.Variant).Counts.Total;
                    o.Line($"cell {i + 1} of {plan.Count}: {c.Variant.Name} {(c.Task is null ? "instruction" : c.Task.Name)} seed {c.Seed} epochs {c.Epochs} ({n:N0} parameters) -> {c.Dir}");
                }
                return new
                {
                    cells = plan.Select(c => new { variant = c.Variant.Name, task = c.Task?.Name, seed = c.Seed, epochs = c.Epochs, directory = c.Dir }),
                    variants = estimates.Select(e => new { name = e.Variant.Name, trainable_parameters = e.Counts.Total, memory_bytes = e.Memory.TotalBytes }),
                };
            }
            var outcome = runner.Run(interruption.Token);
            if (outcome.Interrupted)
            {
                interrupted = true;
                Console.Error.WriteLine($"interrupted after {outcome.Cells.Count} finished cells; run the same command again to continue");
                return null;
            }
            var report = outcome.Report!;
            o.Line(report.Markdown());
            o.Line($"results in {outDir} (results.csv, results.json, table.md, figures)");
            return new
            {
                output = outDir,
                rows = report.Rows.Select(r => new { variant = r.Variant, trainable_parameters = r.TrainableParameters, average = r.Average, tasks = r.Tasks }),
                friedman = report.Friedman,
                pairs = report.Pairs,
            };
        }
    }
}
