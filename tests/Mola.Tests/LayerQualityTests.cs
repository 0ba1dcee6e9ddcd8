using System.Text.Json;
using Mola.Analysis;
using Mola.Models;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class LayerQualityTests
{
    [Fact]
    public void HillAlpha_SmallSpectrum_MatchesTheFormulaByHand()
    {
        // Tail 1, 2, 4, 8 from x_min 1: sum ln(x / 1) = ln 2 + ln 4 + ln 8 = 6 ln 2, so alpha = 1 + 4 / (6 ln 2).
        Assert.Equal(1 + 4 / (6 * Math.Log(2)), PowerLaw.HillAlpha([1, 2, 4, 8], 0), 12);
        // From x_min 2: ln 2 + ln 4 = 3 ln 2 over 3 values.
        Assert.Equal(1 + 3 / (3 * Math.Log(2)), PowerLaw.HillAlpha([1, 2, 4, 8], 1), 12);
    }

    [Fact]
    public void KsDistance_SmallSpectrum_MatchesTheStepsByHand()
    {
        // alpha 2: F(x) = 1 - 1/x = 0, 0.5, 0.75, 0.875 against steps 0-0.25, 0.25-0.5, 0.5-0.75, 0.75-1:
        // the largest gap is 0.25 (at 1, 2 and 4), the last one 0.125.
        Assert.Equal(0.25, PowerLaw.KsDistance([1, 2, 4, 8], 0, 2), 12);
        // Tail 4, 8 with alpha 2: F = 0, 0.5 against steps 0-0.5, 0.5-1: 0.5.
        Assert.Equal(0.5, PowerLaw.KsDistance([1, 2, 4, 8], 2, 2), 12);
    }

    /// <summary>A clump of five values near 1 under a geometric tail 5, 10, 20, 40, 80. Worked by hand (each candidate's
    /// alpha, then its largest CDF gap): x_min 5 gives alpha = 1 + 5 / (10 ln 2) = 1.721348 and D = 0.2321 (the gap
    /// at 20: (20/5)^(1 - alpha) = 4^(-1/(2 ln 2)) = 1/e exactly, so F = 1 - 1/e against the step at 0.4, a gap of 0.6 - 1/e), below every other start (1: 0.309, 1.1: 0.310, 1.2: 0.292, 1.3: 0.249, 1.4: 0.270,
    /// 10: 0.25, 20: 1/3, 40: 0.5). The peak search only tries 0.95..1.5 (the histogram's fullest bin, on this
    /// spectrum of distinct values the first, starts at 1), where 1.3 is best.</summary>
    [Fact]
    public void Fit_ChoosesTheStartWithTheSmallestKsDistance()
    {
        double[] spectrum = [80, 1, 1.1, 1.2, 1.3, 1.4, 5, 10, 20, 40];   // any order
        var all = PowerLaw.Fit(spectrum, XminSearch.All);
        Assert.Equal(5, all.Xmin);
        Assert.Equal(5, all.TailSize);
        Assert.Equal(1 + 5 / (10 * Math.Log(2)), all.Alpha, 12);
        Assert.Equal(0.6 - 1 / Math.E, all.KsDistance, 12);
        Assert.Equal(10, all.Eigenvalues);

        var peak = PowerLaw.Fit(spectrum, XminSearch.Peak);
        Assert.Equal(1.3, peak.Xmin);
        Assert.Equal(7, peak.TailSize);
        Assert.Equal(0.2487, peak.KsDistance, 4);
    }

    [Fact]
    public void Fit_DropsZerosOfARankDeficientMatrix_AndRefusesASpectrumWithoutATail()
    {
        var fit = PowerLaw.Fit([0, 1e-20, 1, 2, 4, 8], XminSearch.All);
        Assert.Equal(4, fit.Eigenvalues);
        Assert.Throws<MolaException>(() => PowerLaw.Fit([3, 3, 3], XminSearch.All));
        Assert.Throws<ArgumentException>(() => PowerLaw.Fit([1, double.NaN], XminSearch.All));
    }

    /// <summary>W = U diag(sqrt(lambda)) V^T with random orthogonal U, V and lambda drawn from a Pareto law of exponent
    /// <paramref name="alpha"/> (inverse CDF: x_min u^(-1/(alpha-1))): the eigenvalues of W^T W are lambda, and the
    /// estimate lands near alpha (the Hill estimator's standard error is (alpha-1)/sqrt(n), about 0.06 here).</summary>
    [Theory]
    [InlineData(2.5, XminSearch.All)]
    [InlineData(2.5, XminSearch.Peak)]
    [InlineData(4.0, XminSearch.All)]
    public void Eigenvalues_AndFit_RecoverAPrescribedParetoSpectrum(double alpha, XminSearch search)
    {
        const int n = 600;
        var lambda = Pareto(n, alpha, seed: 7);
        using var w = MatrixWithSpectrum(lambda, rows: n + 40, seed: 3);
        var eig = LayerQuality.Eigenvalues(w);
        Assert.Equal(n, eig.Length);
        var sortedTrue = lambda.Order().ToArray();
        var sortedEig = eig.Order().ToArray();
        for (int i = 0; i < n; i++) Assert.True(Math.Abs(sortedEig[i] - sortedTrue[i]) <= 1e-9 * sortedTrue[^1], $"eigenvalue {i}");

        var fit = PowerLaw.Fit(eig, search);
        Assert.InRange(fit.Alpha, alpha - 0.25, alpha + 0.25);
    }

    /// <summary>The Gram route against the squared singular values (libtorch's svdvals, a different algorithm: a
    /// bidiagonalisation of W itself), tall and wide: a Pareto spectrum of 300 eigenvalues (alpha 2.5, from 1 to about 45), then
    /// 20 more falling geometrically to 1e-14 of the largest. The Gram route errs by about max(m, n) eps lambda_max absolutely (here
    /// 340 x 2.2e-16 = 7.5e-14 of the largest; asserted with a factor 4), so eigenvalues above 1e-4 of the largest keep
    /// 1e-9 relative accuracy, which is where the tail starts, and the fit (alpha, x_min, tail) is the same to 1e-9.</summary>
    [Theory]
    [InlineData(340, XminSearch.All)]
    [InlineData(340, XminSearch.Peak)]
    [InlineData(-1, XminSearch.All)]
    public void GramEigenvalues_EqualTheSquaredSingularValues_AndGiveTheSameFit(int rows, XminSearch search)
    {
        var pareto = Pareto(300, 2.5, seed: 9);
        double top = pareto.Max();
        var lambda = pareto.Concat(Enumerable.Range(1, 20).Select(i => top * Math.Pow(10, -0.7 * i))).ToArray();
        using var tall = MatrixWithSpectrum(lambda, rows: 340, seed: 4);
        using var w = rows > 0 ? tall.clone() : tall.t().contiguous();   // [340, 320] or [320, 340]
        var gram = LayerQuality.Eigenvalues(w);
        using var sv = linalg.svdvals(w);
        var reference = sv.data<double>().Select(x => x * x).ToArray();
        Assert.Equal(320, gram.Length);
        double absolute = 4 * 340 * 2.220446049250313e-16 * reference[0];
        for (int i = 0; i < reference.Length; i++)
        {
            Assert.True(Math.Abs(gram[i] - reference[i]) <= absolute, $"eigenvalue {i}: {gram[i]} against {reference[i]}");
            if (reference[i] >= 1e-4 * reference[0])
                Assert.True(Math.Abs(gram[i] - reference[i]) <= 1e-9 * reference[i], $"eigenvalue {i}: {gram[i]} against {reference[i]}, relative");
        }
        var (a, b) = (PowerLaw.Fit(gram, search), PowerLaw.Fit(reference, search));
        Assert.True(Math.Abs(a.Xmin - b.Xmin) <= 1e-9 * b.Xmin, $"x_min {a.Xmin} against {b.Xmin}");
        Assert.Equal(b.TailSize, a.TailSize);
        Assert.True(Math.Abs(a.Alpha - b.Alpha) <= 1e-9 * b.Alpha, $"alpha {a.Alpha} against {b.Alpha}");
    }

    [Fact]
    public void Pearson_SmallSeries_MatchesTheFormulaByHand()
    {
        // x = 1, 2, 3; y = 2, 4, 7: sxy = 5, sxx = 2, syy = 38/3, so r = 5 / sqrt(76/3).
        Assert.Equal(5 / Math.Sqrt(76.0 / 3), LayerQuality.Pearson([1, 2, 3], [2, 4, 7])!.Value, 12);
        Assert.Null(LayerQuality.Pearson([1, 2, 3], [5, 5, 5]));
    }

    /// <summary>A three-layer checkpoint whose q_proj spectra are Pareto laws of exponent 2, 3 and 4: the per-layer
    /// report follows the prescribed exponents, read one matrix at a time from model.safetensors.</summary>
    [Fact]
    public void Compute_ReadsEachTargetedMatrix_AndAveragesPerLayer()
    {
        double[] alphas = [2, 3, 4];
        string dir = PrescribedModel(alphas);
        var report = LayerQuality.Compute(dir, ["q_proj"], XminSearch.All);
        Assert.Equal(3, report.Modules.Count);
        for (int l = 0; l < 3; l++)
        {
            Assert.Equal(report.Modules[l].Fit.Alpha, report.Layers[l].Alpha);
            Assert.InRange(report.Layers[l].Alpha, alphas[l] - 0.3, alphas[l] + 0.3);
        }
        var missing = Assert.Throws<MolaException>(() => LayerQuality.Compute(dir, ["q_proj", "v_proj"]));
        Assert.Contains("model.layers.0.self_attn.v_proj.weight", missing.Message);
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void AnalyzeCommand_LayerQuality_WritesFiles_AndCorrelatesWithTheAdapter()
    {
        string output = Path.Combine(TestUtil.TempDir(), "out");
        var r = CliRunner.Run(["analyze", "--layer-quality", "--base-model", TestUtil.Fixture("llama-tiny"),
            "--adapter", TestUtil.Fixture("llama-tiny-mola"), "--output", output, "--json"], TimeSpan.FromMinutes(3));
        Assert.True(r.ExitCode == 0, r.ToString());
        foreach (var f in new[] { "layer_quality.csv", "layer_quality.json", "layer_quality.png", "redundancy.csv", "analysis.json" })
            Assert.True(File.Exists(Path.Combine(output, f)), f);
        using var json = JsonDocument.Parse(r.Stdout.TrimEnd().Split('\n')[^1]);
        var q = json.RootElement.GetProperty("layer_quality");
        var layers = q.GetProperty("layers").EnumerateArray().Select(l => l.GetProperty("alpha").GetDouble()).ToArray();
        Assert.Equal(3, layers.Length);
        // The mean over the seven modules, from the CSV's own rows.
        var csv = File.ReadAllLines(Path.Combine(output, "layer_quality.csv")).Skip(1).Select(l => l.Split(',')).ToList();
        Assert.Equal(21, csv.Count);
        for (int l = 0; l < 3; l++)
            Assert.Equal(csv.Where(c => c[0] == l.ToString()).Average(c => double.Parse(c[2], System.Globalization.CultureInfo.InvariantCulture)), layers[l], 10);
        // Pearson against the adapter's per-layer redundancy, from analysis.json.
        using var analysis = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "analysis.json")));
        var redundancy = analysis.RootElement.GetProperty("redundancy_by_layer").EnumerateArray()
            .Where(l => l.GetProperty("mean_pairwise_frobenius").ValueKind == JsonValueKind.Number)
            .Select(l => (Layer: l.GetProperty("layer").GetInt32(), V: l.GetProperty("mean_pairwise_frobenius").GetDouble())).ToList();
        var expected = LayerQuality.Pearson(redundancy.Select(x => layers[x.Layer]).ToList(), redundancy.Select(x => x.V).ToList());
        Assert.Equal(expected!.Value, q.GetProperty("redundancy_pearson").GetDouble(), 12);

        var bad = CliRunner.RunInProcess(["analyze", "--layer-quality", "--output", output]);
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("--layer-quality needs --base-model", bad.Stderr);
        bad = CliRunner.RunInProcess(["analyze", "--layer-quality", "--base-model", TestUtil.Fixture("llama-tiny"), "--xmin-search", "top", "--output", output]);
        Assert.Contains("--xmin-search: \"top\" is not a search (expected peak or all)", bad.Stderr);
    }

    internal static double[] Pareto(int n, double alpha, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => Math.Pow(1 - rng.NextDouble(), -1 / (alpha - 1))).ToArray();
    }

    internal static Tensor MatrixWithSpectrum(double[] lambda, int rows, int seed)
    {
        using var scope = NewDisposeScope();
        var gen = new Generator().manual_seed(seed);
        int n = lambda.Length;
        var (u, _) = linalg.qr(randn(rows, n, dtype: ScalarType.Float64, generator: gen));     // [rows, n], orthonormal columns
        var (v, _) = linalg.qr(randn(n, n, dtype: ScalarType.Float64, generator: gen));
        var s = tensor(lambda.Select(Math.Sqrt).ToArray(), dtype: ScalarType.Float64);
        return (u * s).matmul(v.t()).MoveToOuterDisposeScope();
    }

    /// <summary>A model directory of config.json (llama-tiny's) and the q_proj weights of each layer, [440, 400] float32 with the
    /// spectrum of a Pareto law of the given exponent.</summary>
    internal static string PrescribedModel(double[] alphas)
    {
        string dir = TestUtil.TempDir();
        File.Copy(TestUtil.Fixture("llama-tiny", "config.json"), Path.Combine(dir, "config.json"));
        var tensors = new Dictionary<string, Tensor>();
        for (int l = 0; l < alphas.Length; l++)
            tensors[$"model.layers.{l}.self_attn.q_proj.weight"] = MatrixWithSpectrum(Pareto(400, alphas[l], seed: 10 + l), 440, seed: l).to(ScalarType.Float32);
        SafeTensorsFile.Save(Path.Combine(dir, "model.safetensors"), tensors);
        foreach (var t in tensors.Values) t.Dispose();
        return dir;
    }
}
