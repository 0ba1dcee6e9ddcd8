using System.Text.Json.Nodes;

namespace Mola.Training.Monitoring;

/// <summary>
/// <c>loss.png</c> in the run directory: the training loss and the evaluation loss against the optimizer step, drawn
/// from <c>metrics.jsonl</c> and <c>eval.jsonl</c> (so a resumed run's picture holds the steps before it too), when a
/// run resumes and when it ends.
/// </summary>
public sealed class LossCurve(string runDirectory) : IMetricsSink
{
    public string PngPath => Path.Combine(runDirectory, "loss.png");

    public void Started(long step)
    {
        if (step > 0) Draw();
    }

    public void Step(StepMetrics metrics) { }

    public void Finished(long step) => Draw();

    public void Draw()
    {
        var (train, eval) = Read(runDirectory);
        var plot = new ScottPlot.Plot();
        if (train.Count > 0)
        {
            var line = plot.Add.Scatter(train.Select(p => (double)p.Step).ToArray(), train.Select(p => p.Loss).ToArray());
            line.LegendText = "training loss";
            line.MarkerSize = train.Count > 50 ? 0 : 4;
        }
        if (eval.Count > 0)
        {
            var points = plot.Add.Scatter(eval.Select(p => (double)p.Step).ToArray(), eval.Select(p => p.Loss).ToArray());
            points.LegendText = "evaluation loss";
            points.MarkerSize = 7;
        }
        plot.Title("Loss");
        plot.XLabel("step");
        plot.YLabel("loss");
        if (train.Count + eval.Count > 0) plot.ShowLegend();
        string tmp = PngPath + ".tmp.png";
        plot.SavePng(tmp, 800, 500);
        File.Move(tmp, PngPath, overwrite: true);
    }

    /// <summary>(step, loss) of every metrics line, and (step, eval_loss) of the lines with one and of eval.jsonl.</summary>
    public static (List<(long Step, double Loss)> Train, List<(long Step, double Loss)> Eval) Read(string runDirectory)
    {
        var train = new List<(long, double)>();
        var eval = new SortedDictionary<long, double>();
        foreach (var (file, isMetrics) in new[] { ("metrics.jsonl", true), ("eval.jsonl", false) })
        {
            string path = Path.Combine(runDirectory, file);
            if (!File.Exists(path)) continue;
            foreach (var line in File.ReadLines(path))
            {
                // A half-written last line of a killed run is skipped; the trainer repairs metrics.jsonl on resume.
                if (string.IsNullOrWhiteSpace(line)) continue;
                JsonObject? o;
                try { o = JsonNode.Parse(line) as JsonObject; }
                catch (System.Text.Json.JsonException) { continue; }
                if (o?["step"] is not JsonValue s || !s.TryGetValue(out long step)) continue;
                if (isMetrics && o["loss"] is JsonValue l && l.TryGetValue(out double loss)) train.Add((step, loss));
                if (o["eval_loss"] is JsonValue e && e.TryGetValue(out double evalLoss)) eval[step] = evalLoss;
            }
        }
        return (train, eval.Select(kv => (kv.Key, kv.Value)).ToList());
    }

    public void Dispose() { }
}
