using ScottPlot;
using Mola.Analysis;

namespace Mola.Evaluation;

/// <summary>A study's figures: average accuracy against trainable parameters, and per-task bars with their intervals.</summary>
public static class StudyFigures
{
    public static void Write(StudyReport report, string dir)
    {
        var palette = new ScottPlot.Palettes.Category10();
        var scatter = Figures.NewPlot("Average test accuracy against trainable parameters", "trainable parameters", "average accuracy (%)");
        for (int v = 0; v < report.Rows.Count; v++)
        {
            var r = report.Rows[v];
            var point = scatter.Add.Scatter(new[] { (double)r.TrainableParameters }, new[] { r.Average });
            point.Color = palette.GetColor(v);
            point.MarkerSize = 12;
            point.LegendText = r.Variant;
        }
        scatter.ShowLegend(Edge.Right);
        scatter.SavePng(Path.Combine(dir, "accuracy_vs_parameters.png"), 900, 560);

        var bars = Figures.NewPlot("Test accuracy per task (mean over seeds, 95% interval)", "task", "accuracy (%)");
        int k = report.Rows.Count;
        double width = 0.8 / k;
        var items = new List<Bar>();
        for (int t = 0; t < report.Tasks.Count; t++)
            for (int v = 0; v < k; v++)
            {
                var i = report.Rows[v].Tasks[t];
                items.Add(new Bar
                {
                    Position = t - 0.4 + width * (v + 0.5),
                    Value = i.Mean,
                    Error = i.HalfWidth ?? 0,
                    Size = width * 0.9,
                    FillColor = palette.GetColor(v),
                    LineWidth = 0,
                });
            }
        bars.Add.Bars(items);
        for (int v = 0; v < k; v++) bars.Legend.ManualItems.Add(new LegendItem { LabelText = report.Rows[v].Variant, FillColor = palette.GetColor(v) });
        bars.ShowLegend(Edge.Right);
        bars.Axes.Bottom.SetTicks(Enumerable.Range(0, report.Tasks.Count).Select(t => (double)t).ToArray(), report.Tasks.ToArray());
        bars.Axes.Margins(bottom: 0);
        bars.SavePng(Path.Combine(dir, "accuracy_per_task.png"), Math.Clamp(300 + 160 * report.Tasks.Count, 820, 2000), 560);
    }
}
