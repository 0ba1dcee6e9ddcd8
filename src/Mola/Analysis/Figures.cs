using System.Globalization;
using ScottPlot;

namespace Mola.Analysis;

/// <summary>PNG figures of the analysis (the paper's figures 3-5), drawn with ScottPlot.</summary>
public static class Figures
{
    const int TitleSize = 20, LabelSize = 16, TickSize = 13;

    // ScottPlot's own font detection settles on a serif face where only DejaVu is installed (Debian):
    // pick an installed sans family by name, else keep ScottPlot's choice. Plots take the default
    // font when they are created (setting it per plot loses the bold title), so it is set once here.
    static Figures()
    {
        var installed = SkiaSharp.SKFontManager.Default.FontFamilies.ToHashSet(StringComparer.OrdinalIgnoreCase);
        if (new[] { "DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial", "Helvetica", "Segoe UI" }.FirstOrDefault(installed.Contains) is { } sans)
            Fonts.Default = sans;
    }

    /// <summary>Layer x module heatmap of the mean pairwise distance, with a colour bar; empty cells are
    /// layers with a single expert.</summary>
    public static void RedundancyHeatmap(RedundancyReport report, string path)
    {
        var modules = report.ModuleNames;
        var row = modules.Select((m, i) => (m, i)).ToDictionary(x => x.m, x => x.i);
        int layers = report.Layers.Count == 0 ? 0 : report.Layers.Max(l => l.Layer) + 1;
        // Heatmap rows are drawn top to bottom: row 0 is the first module.
        var values = new double[modules.Count, layers];
        for (int i = 0; i < modules.Count; i++)
            for (int l = 0; l < layers; l++)
                values[i, l] = double.NaN;
        foreach (var m in report.Modules)
            values[row[m.Module], m.Layer] = m.MeanPairwiseFrobenius ?? double.NaN;

        bool anySingle = report.Modules.Any(m => m.MeanPairwiseFrobenius is null);
        var plot = NewPlot("Expert redundancy: mean pairwise ||B_i A_i - B_j A_j||_F",
            anySingle ? "layer (grey: a single expert, no pairs)" : "layer", "module");
        // Cell centres sit at integer coordinates: column l at x = l, row i at y = rows - 1 - i.
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, layers).Select(l => (double)l).ToArray(), LayerLabels(layers));
        plot.Axes.Left.SetTicks(Enumerable.Range(0, modules.Count).Select(i => (double)(modules.Count - 1 - i)).ToArray(), modules.ToArray());
        plot.Axes.SetLimits(-0.5, layers - 0.5, -0.5, modules.Count - 0.5);
        int width = WidthFor(layers), height = Math.Max(460, 260 + 50 * modules.Count);
        if (!report.Modules.Any(m => m.MeanPairwiseFrobenius is not null))
        {
            // ScottPlot cannot scale colours to an all-NaN grid; say why the figure is empty instead.
            var note = plot.Add.Text("every layer has a single expert: no pairs to compare", (layers - 1) / 2.0, (modules.Count - 1) / 2.0);
            note.LabelAlignment = Alignment.MiddleCenter;
            note.LabelFontSize = LabelSize;
            plot.SavePng(path, width, height);
            return;
        }

        var heatmap = plot.Add.Heatmap(values);
        heatmap.Colormap = new ScottPlot.Colormaps.Viridis();
        heatmap.NaNCellColor = Colors.LightGray;
        var bar = plot.Add.ColorBar(heatmap);
        bar.Label = "mean pairwise distance (lower = more redundant)";
        bar.LabelStyle.FontSize = LabelSize;

        // Values in the cells while they fit; dark text on the bright (high) end of viridis.
        if (layers <= 16)
        {
            var range = heatmap.GetRange();
            foreach (var m in report.Modules.Where(m => m.MeanPairwiseFrobenius is not null))
            {
                double v = m.MeanPairwiseFrobenius!.Value;
                var text = plot.Add.Text(v.ToString("G3", CultureInfo.InvariantCulture), m.Layer, modules.Count - 1 - row[m.Module]);
                text.LabelAlignment = Alignment.MiddleCenter;
                text.LabelFontSize = TickSize;
                bool bright = range.Max > range.Min && (v - range.Min) / (range.Max - range.Min) > 0.6;
                text.LabelFontColor = bright ? Colors.Black : Colors.White;
            }
        }
        plot.SavePng(path, width, height);
    }

    /// <summary>One line: the mean redundancy of each layer (mean over its modules).</summary>
    public static void RedundancyByLayer(RedundancyReport report, string path)
    {
        var plot = NewPlot("Expert redundancy by layer", "layer", "mean pairwise distance (mean over modules)");
        AddLayerLine(plot, report, null);
        int layers = report.Layers.Count == 0 ? 0 : report.Layers.Max(l => l.Layer) + 1;
        FinishLayerAxis(plot, layers);
        if (report.Layers.All(l => l.MeanPairwiseFrobenius is null))
        {
            plot.Axes.SetLimitsY(0, 1);
            var note = plot.Add.Text("every layer has a single expert: no pairs to compare", (layers - 1) / 2.0, 0.5);
            note.LabelAlignment = Alignment.MiddleCenter;
            note.LabelFontSize = LabelSize;
        }
        plot.SavePng(path, WidthFor(report.Layers.Count), 520);
    }

    /// <summary>Several adapters' per-layer mean redundancy side by side, with a legend.</summary>
    public static void CompareRedundancy(IReadOnlyList<RedundancyReport> reports, IReadOnlyList<string> labels, string path)
    {
        var plot = NewPlot("Expert redundancy by layer: adapters compared", "layer", "mean pairwise distance (mean over modules)");
        var palette = new ScottPlot.Palettes.Category10();
        for (int i = 0; i < reports.Count; i++)
            AddLayerLine(plot, reports[i], (labels[i], palette.GetColor(i)));
        int layers = reports.Max(r => r.Layers.Count == 0 ? 0 : r.Layers.Max(l => l.Layer) + 1);
        FinishLayerAxis(plot, layers);
        // Outside the data area: the lines may run anywhere.
        plot.ShowLegend(Edge.Right);
        plot.Legend.FontSize = TickSize;
        plot.SavePng(path, WidthFor(layers) + 160, 560);
    }

    /// <summary>Grouped bars: for each layer, one bar per expert with its selection frequency
    /// (selections per token, pooled over the layer's modules; a layer's bars add up to its top-k).</summary>
    public static void RoutingFrequency(RoutingStatistics routing, string path)
    {
        var rows = routing.LayerRows();
        int layers = rows.Count == 0 ? 0 : rows.Max(r => r.Layer) + 1;
        int maxExperts = rows.Count == 0 ? 1 : rows.Max(r => r.Expert) + 1;
        var plot = NewPlot("Expert selection frequency by layer (pooled over modules)", "layer", "selections per token (a layer sums to its top-k)");
        var palette = new ScottPlot.Palettes.Category10();
        // Each layer owns the interval [l - 0.4, l + 0.4], split evenly among its own experts.
        var bars = new List<Bar>();
        foreach (var layer in rows.GroupBy(r => r.Layer))
        {
            int experts = layer.Count();
            double width = 0.8 / experts;
            foreach (var r in layer)
                bars.Add(new Bar
                {
                    Position = layer.Key - 0.4 + width * (r.Expert + 0.5),
                    Value = r.Frequency,
                    Size = width * 0.9,
                    FillColor = palette.GetColor(r.Expert),
                    LineWidth = 0,
                });
        }
        plot.Add.Bars(bars);
        for (int e = 0; e < maxExperts; e++)
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = $"expert {e}", FillColor = palette.GetColor(e) });
        plot.ShowLegend(Edge.Right);
        plot.Legend.FontSize = TickSize;
        FinishLayerAxis(plot, layers);
        plot.Axes.Margins(bottom: 0);
        plot.SavePng(path, WidthFor(layers * Math.Max(1, maxExperts / 2)) + 120, 540);
    }

    /// <summary>PL_Alpha_Hill by layer: one thin line per module and the layer mean in black.</summary>
    public static void LayerQuality(LayerQualityReport report, string path)
    {
        var plot = NewPlot("Layer quality: PL_Alpha_Hill of W^T W (lower = heavier tail, better trained)", "layer", "PL_Alpha_Hill");
        var palette = new ScottPlot.Palettes.Category10();
        var modules = report.Modules.Select(m => m.Module).Distinct().ToList();
        for (int i = 0; i < modules.Count; i++)
        {
            var rows = report.Modules.Where(m => m.Module == modules[i]).ToList();
            var line = plot.Add.Scatter(rows.Select(m => (double)m.Layer).ToArray(), rows.Select(m => m.Fit.Alpha).ToArray());
            line.Color = palette.GetColor(i);
            line.LineWidth = 1.5f;
            line.MarkerSize = 5;
            line.LegendText = modules[i];
        }
        var mean = plot.Add.Scatter(report.Layers.Select(l => (double)l.Layer).ToArray(), report.Layers.Select(l => l.Alpha).ToArray());
        mean.Color = Colors.Black;
        mean.LineWidth = 3;
        mean.MarkerSize = 8;
        mean.LegendText = "layer mean";
        FinishLayerAxis(plot, report.Layers.Count);
        plot.ShowLegend(Edge.Right);
        plot.Legend.FontSize = TickSize;
        plot.SavePng(path, WidthFor(report.Layers.Count) + 160, 560);
    }

    internal static Plot NewPlot(string title, string xLabel, string yLabel)
    {
        var plot = new Plot();
        plot.Title(title);
        plot.Axes.Title.Label.FontSize = TitleSize;
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.Axes.Bottom.Label.FontSize = LabelSize;
        plot.Axes.Left.Label.FontSize = LabelSize;
        plot.Axes.Bottom.TickLabelStyle.FontSize = TickSize;
        plot.Axes.Left.TickLabelStyle.FontSize = TickSize;
        return plot;
    }

    /// <summary>Layers with a single expert have no redundancy: the line skips them.</summary>
    static void AddLayerLine(Plot plot, RedundancyReport report, (string Label, Color Color)? legend)
    {
        var points = report.Layers.Where(l => l.MeanPairwiseFrobenius is not null).ToList();
        var line = plot.Add.Scatter(points.Select(l => (double)l.Layer).ToArray(), points.Select(l => l.MeanPairwiseFrobenius!.Value).ToArray());
        line.LineWidth = 2.5f;
        line.MarkerSize = 9;
        if (legend is { } lg)
        {
            line.Color = lg.Color;
            line.LegendText = lg.Label;
        }
    }

    static void FinishLayerAxis(Plot plot, int layers)
    {
        int step = layers <= 16 ? 1 : layers <= 40 ? 2 : 4;
        var ticks = Enumerable.Range(0, layers).Where(l => l % step == 0).ToArray();
        plot.Axes.Bottom.SetTicks(ticks.Select(l => (double)l).ToArray(), ticks.Select(l => l.ToString()).ToArray());
        plot.Axes.SetLimitsX(-0.6, Math.Max(layers, 1) - 0.4);
    }

    static string[] LayerLabels(int layers) =>
        Enumerable.Range(0, layers).Select(l => layers <= 40 || l % 2 == 0 ? l.ToString() : "").ToArray();

    static int WidthFor(int columns) => Math.Clamp(260 + 36 * columns, 820, 2000);
}
