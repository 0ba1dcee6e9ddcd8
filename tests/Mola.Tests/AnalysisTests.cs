using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Mola.Analysis;
using Mola.Cli.Commands;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class AnalysisTests
{
    internal static readonly string[] Modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    internal static string Prefix(int layer, string module) =>
        $"base_model.model.model.layers.{layer}.{(module is "gate_proj" or "up_proj" or "down_proj" ? "mlp" : "self_attn")}.{module}";

    /// <summary>The naive statement: form every B_e A_e [out, in] and average ||P_i - P_j||_F over i &lt; j.</summary>
    internal static double NaiveMeanPairwise(IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        using var scope = NewDisposeScope();
        var products = a.Zip(b, (ai, bi) => bi.to(ScalarType.Float64).matmul(ai.to(ScalarType.Float64))).ToList();
        double sum = 0;
        int pairs = 0;
        for (int i = 0; i < products.Count; i++)
            for (int j = i + 1; j < products.Count; j++)
            {
                sum += Math.Sqrt((products[i] - products[j]).pow(2).sum().item<double>());
                pairs++;
            }
        return sum / pairs;
    }

    /// <summary>Writes an adapter directory: experts[l] experts in layer l on the given modules, random
    /// A [r, 8] and B [8, r] (LORA: unindexed names, one update per module).</summary>
    static string MakeAdapter(int[] experts, string peftType = "MOLA", string[]? modules = null, int r = 2, int seed = 1)
    {
        modules ??= ["q_proj", "v_proj"];
        string dir = TestUtil.TempDir();
        var gen = new Generator().manual_seed(seed);
        var tensors = new Dictionary<string, Tensor>();
        for (int l = 0; l < experts.Length; l++)
            foreach (var m in modules)
            {
                if (peftType == "LORA")
                {
                    tensors[$"{Prefix(l, m)}.lora_A.weight"] = randn(r, 8, generator: gen);
                    tensors[$"{Prefix(l, m)}.lora_B.weight"] = randn(8, r, generator: gen);
                    continue;
                }
                for (int e = 0; e < experts[l]; e++)
                {
                    // Experts drift further apart in higher layers, so the figures show a trend.
                    tensors[$"{Prefix(l, m)}.lora_A.{e}.weight"] = randn(r, 8, generator: gen) * (1 + 0.1 * l);
                    tensors[$"{Prefix(l, m)}.lora_B.{e}.weight"] = randn(8, r, generator: gen) * 0.1;
                }
                tensors[$"{Prefix(l, m)}.router.weight"] = randn(experts[l], 8, generator: gen);
            }
        SafeTensorsFile.Save(Path.Combine(dir, "adapter_model.safetensors"), tensors);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["peft_type"] = peftType,
            ["target_modules"] = modules,
            ["r"] = r,
            ["lora_alpha"] = 16,
            ["num_experts"] = experts,
            ["top_k"] = experts.Select(e => Math.Min(2, e)).ToArray(),
        }));
        foreach (var t in tensors.Values) t.Dispose();
        return dir;
    }

    [Fact]
    public void Redundancy_MatchesNaiveFrobenius_OnEveryLayerAndModuleOfTheFixture()
    {
        string dir = TestUtil.Fixture("llama-tiny-mola");
        var report = Redundancy.Compute(dir);
        var weights = TestUtil.ReadAll(Path.Combine(dir, "adapter_model.safetensors"));
        int[] experts = [2, 4, 8];

        Assert.Equal(3 * Modules.Length, report.Modules.Count);
        for (int l = 0; l < 3; l++)
        {
            var expectedModules = new List<double>();
            foreach (var m in Modules)
            {
                var a = Enumerable.Range(0, experts[l]).Select(e => weights[$"{Prefix(l, m)}.lora_A.{e}.weight"]).ToList();
                var b = Enumerable.Range(0, experts[l]).Select(e => weights[$"{Prefix(l, m)}.lora_B.{e}.weight"]).ToList();
                double expected = NaiveMeanPairwise(a, b);
                var row = Assert.Single(report.Modules, x => x.Layer == l && x.Module == m);
                Assert.Equal(experts[l], row.Experts);
                Assert.NotNull(row.MeanPairwiseFrobenius);
                Assert.True(expected > 0.1, $"layer {l} {m}: the fixture's experts should differ");
                Assert.Equal(expected, row.MeanPairwiseFrobenius!.Value, 1e-9 * expected);
                expectedModules.Add(expected);
            }
            var layer = Assert.Single(report.Layers, x => x.Layer == l);
            Assert.Equal(experts[l], layer.Experts);
            Assert.Equal(expectedModules.Average(), layer.MeanPairwiseFrobenius!.Value, 1e-9);
        }
        Assert.Equal(Modules, report.ModuleNames);
        foreach (var t in weights.Values) t.Dispose();
    }

    [Fact]
    public void Redundancy_HandMadeAdapter_SingleExpertIsNull_AndTwoExpertsGiveTheHandDistance()
    {
        // Layer 0: one expert. Layer 1: P0 = B0 A0 = [[1, 0], [0, 0]], P1 = B1 A1 = [[0, 0], [0, 2]], so
        // ||P0 - P1||_F = sqrt(1 + 4). Layer 2: two identical experts, distance exactly 0 (not NaN).
        string dir = TestUtil.TempDir();
        var t = new Dictionary<string, Tensor>
        {
            [$"{Prefix(0, "q_proj")}.lora_A.0.weight"] = tensor(new float[,] { { 1, 2 } }),
            [$"{Prefix(0, "q_proj")}.lora_B.0.weight"] = tensor(new float[,] { { 3 }, { 4 } }),
            [$"{Prefix(1, "q_proj")}.lora_A.0.weight"] = tensor(new float[,] { { 1, 0 } }),
            [$"{Prefix(1, "q_proj")}.lora_B.0.weight"] = tensor(new float[,] { { 1 }, { 0 } }),
            [$"{Prefix(1, "q_proj")}.lora_A.1.weight"] = tensor(new float[,] { { 0, 1 } }),
            [$"{Prefix(1, "q_proj")}.lora_B.1.weight"] = tensor(new float[,] { { 0 }, { 2 } }),
            [$"{Prefix(2, "q_proj")}.lora_A.0.weight"] = tensor(new float[,] { { 0.1f, 0.7f } }),
            [$"{Prefix(2, "q_proj")}.lora_B.0.weight"] = tensor(new float[,] { { 0.3f }, { 0.9f } }),
            [$"{Prefix(2, "q_proj")}.lora_A.1.weight"] = tensor(new float[,] { { 0.1f, 0.7f } }),
            [$"{Prefix(2, "q_proj")}.lora_B.1.weight"] = tensor(new float[,] { { 0.3f }, { 0.9f } }),
        };
        SafeTensorsFile.Save(Path.Combine(dir, "adapter_model.safetensors"), t);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), """{"peft_type": "MOLA", "num_experts": [1, 2, 2], "top_k": [1, 1, 1], "r": 1}""");

        var report = Redundancy.Compute(dir);
        Assert.Equal([0, 1, 2], report.Modules.Select(m => m.Layer));
        Assert.Null(report.Modules[0].MeanPairwiseFrobenius);
        Assert.Equal(1, report.Modules[0].Experts);
        Assert.Null(report.Layers[0].MeanPairwiseFrobenius);
        Assert.Equal(Math.Sqrt(5), report.Modules[1].MeanPairwiseFrobenius!.Value, 1e-12);
        Assert.Equal(Math.Sqrt(5), report.Layers[1].MeanPairwiseFrobenius!.Value, 1e-12);
        Assert.Equal(0.0, report.Modules[2].MeanPairwiseFrobenius!.Value);
    }

    [Fact]
    public void Redundancy_LoraAdapter_IsAClearError()
    {
        string dir = MakeAdapter([1, 1], peftType: "LORA");
        var e = Assert.Throws<MolaException>(() => Redundancy.Compute(dir));
        Assert.Contains("adapter_config.json", e.Message);
        Assert.Contains("LORA", e.Message);
        Assert.Contains("no expert pairs", e.Message);
    }

    [Fact]
    public void Redundancy_ExpertCountDisagreeingWithConfig_IsAnError()
    {
        string dir = MakeAdapter([2, 3]);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), """{"peft_type": "MOLA", "num_experts": [2, 4]}""");
        var e = Assert.Throws<MolaException>(() => Redundancy.Compute(dir));
        Assert.Contains("layer 1", e.Message);
        Assert.Contains("num_experts[1] = 4", e.Message);
    }

    [Fact]
    public void Redundancy_MissingExpertTensor_IsAnError()
    {
        string dir = TestUtil.TempDir();
        var t = new Dictionary<string, Tensor>
        {
            [$"{Prefix(0, "q_proj")}.lora_A.0.weight"] = ones(1, 2),
            [$"{Prefix(0, "q_proj")}.lora_B.0.weight"] = ones(2, 1),
            [$"{Prefix(0, "q_proj")}.lora_A.1.weight"] = ones(1, 2),
        };
        SafeTensorsFile.Save(Path.Combine(dir, "adapter_model.safetensors"), t);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), """{"peft_type": "MOLA"}""");
        var e = Assert.Throws<MolaException>(() => Redundancy.Compute(dir));
        Assert.Contains("lora_B.1.weight\" is missing", e.Message);
    }

    /// <summary>Layer 0 q_proj, 4 experts, top-2, two batches (4 tokens):
    /// batch 1: [0,1] w [.7,.3]; [1,2] w [.6,.4]; [1,0] w [.5,.5]. batch 2: [2,0] w [.9,.1].
    /// expert 0: 3 selections, weights .7 + .5 + .1 = 1.3; expert 1: 3, .3 + .6 + .5 = 1.4;
    /// expert 2: 2, .4 + .9 = 1.3; expert 3: never.</summary>
    static RoutingStatistics HandRouting()
    {
        var stats = new RoutingStatistics();
        stats.Add(0, "q_proj", tensor(new long[,] { { 0, 1 }, { 1, 2 }, { 1, 0 } }), tensor(new float[,] { { 0.7f, 0.3f }, { 0.6f, 0.4f }, { 0.5f, 0.5f } }), 4);
        stats.Add(0, "q_proj", tensor(new long[,] { { 2, 0 } }), tensor(new float[,] { { 0.9f, 0.1f } }), 4);
        // Another module of the same layer: 2 tokens, both pick expert 3 then expert 0.
        stats.Add(0, "v_proj", tensor(new long[,] { { 3, 0 }, { 3, 0 } }), tensor(new float[,] { { 0.8f, 0.2f }, { 0.6f, 0.4f } }), 4);
        return stats;
    }

    [Fact]
    public void RoutingStatistics_HandCase_CountsFrequenciesAndMeanWeights()
    {
        var rows = HandRouting().Rows();
        Assert.Equal(8, rows.Count);
        var q = rows.Where(r => r.Module == "q_proj").ToList();
        Assert.Equal([0, 1, 2, 3], q.Select(r => r.Expert));
        Assert.Equal([3L, 3, 2, 0], q.Select(r => r.Selections));
        Assert.All(q, r => Assert.Equal(4, r.Tokens));
        Assert.Equal([0.75, 0.75, 0.5, 0.0], q.Select(r => r.Frequency));
        Assert.Equal(1.3 / 3, q[0].MeanWeight!.Value, 1e-6);
        Assert.Equal(1.4 / 3, q[1].MeanWeight!.Value, 1e-6);
        Assert.Equal(1.3 / 2, q[2].MeanWeight!.Value, 1e-6);
        Assert.Null(q[3].MeanWeight);
        Assert.Equal(4 * 2, q.Sum(r => r.Selections));

        var v = rows.Where(r => r.Module == "v_proj").ToList();
        Assert.Equal([2L, 0, 0, 2], v.Select(r => r.Selections));
        Assert.Equal(0.3, v[0].MeanWeight!.Value, 1e-6);
        Assert.Equal(0.7, v[3].MeanWeight!.Value, 1e-6);

        // Pooled over the layer's modules: 6 tokens, expert 0 chosen 3 + 2 times.
        var pooled = HandRouting().LayerRows();
        Assert.Equal([5L, 3, 2, 2], pooled.Select(r => r.Selections));
        Assert.All(pooled, r => Assert.Equal(6, r.Tokens));
        Assert.Equal(5.0 / 6, pooled[0].Frequency, 1e-12);
    }

    [Fact]
    public void RoutingStatistics_RandomTopK_CountsSumToTokensTimesK()
    {
        var gen = new Generator().manual_seed(7);
        var stats = new RoutingStatistics();
        int[] experts = [2, 4, 8], topK = [1, 2, 3];
        long[] tokens = [0, 0, 0];
        for (int batch = 0; batch < 3; batch++)
            for (int l = 0; l < 3; l++)
            {
                using var scope = NewDisposeScope();
                int n = 5 + 3 * batch + l;
                var probs = randn(n, experts[l], generator: gen).softmax(-1);
                var (w, idx) = probs.topk(topK[l], dim: -1);
                stats.Add(l, "down_proj", idx, w / w.sum(-1, keepdim: true), experts[l]);
                tokens[l] += n;
            }
        foreach (var layer in stats.Rows().GroupBy(r => r.Layer))
        {
            Assert.Equal(experts[layer.Key], layer.Count());
            Assert.Equal(tokens[layer.Key] * topK[layer.Key], layer.Sum(r => r.Selections));
            Assert.Equal(topK[layer.Key], layer.Sum(r => r.Frequency), 1e-12);
            Assert.All(layer, r => Assert.InRange(r.MeanWeight ?? 0.5, 0, 1));
        }
    }

    [Fact]
    public void RoutingStatistics_RejectsOutOfRangeExpertAndChangedExpertCount()
    {
        var stats = new RoutingStatistics();
        Assert.Throws<ArgumentException>(() => stats.Add(0, "q_proj", tensor(new long[,] { { 0, 4 } }), tensor(new float[,] { { 0.5f, 0.5f } }), 4));
        stats.Add(1, "q_proj", tensor(new long[,] { { 0, 1 } }), tensor(new float[,] { { 0.5f, 0.5f } }), 4);
        Assert.Throws<ArgumentException>(() => stats.Add(1, "q_proj", tensor(new long[,] { { 0, 1 } }), tensor(new float[,] { { 0.5f, 0.5f } }), 3));
    }

    /// <summary>Checks the PNG signature and reads width and height from the IHDR chunk.</summary>
    static (int Width, int Height) PngSize(string path)
    {
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 33, $"{path}: too short for a PNG");
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8]);
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
        int width = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16));
        int height = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20));
        return (width, height);
    }

    [Fact]
    public void Figures_RenderDecodablePngs_ForAManyLayerAdapter()
    {
        // 32 layers in the paper's inverted-triangle shape 2468 (8 layers a group), all seven modules.
        int[] experts = Enumerable.Range(0, 32).Select(l => 2 + 2 * (l / 8)).ToArray();
        string adapter = MakeAdapter(experts, modules: Modules);
        var other = MakeAdapter(Enumerable.Repeat(5, 32).ToArray(), modules: Modules, seed: 2);
        var report = Redundancy.Compute(adapter);
        string dir = TestUtil.TempDir();

        var gen = new Generator().manual_seed(3);
        var routing = new RoutingStatistics();
        for (int l = 0; l < 32; l++)
            foreach (var m in Modules)
            {
                using var scope = NewDisposeScope();
                var (w, idx) = randn(40, experts[l], generator: gen).softmax(-1).topk(2, dim: -1);
                routing.Add(l, m, idx, w / w.sum(-1, keepdim: true), experts[l]);
            }

        Figures.RedundancyHeatmap(report, Path.Combine(dir, "heatmap.png"));
        Figures.RedundancyByLayer(report, Path.Combine(dir, "by_layer.png"));
        Figures.RoutingFrequency(routing, Path.Combine(dir, "routing.png"));
        Figures.CompareRedundancy([report, Redundancy.Compute(other)], ["2468", "5555"], Path.Combine(dir, "compare.png"));
        foreach (var f in new[] { "heatmap.png", "by_layer.png", "routing.png", "compare.png" })
        {
            var (w, h) = PngSize(Path.Combine(dir, f));
            Assert.True(w > 0 && h > 0, $"{f}: {w} x {h}");
        }
    }

    [Fact]
    public void Figures_SingleExpertLayers_RenderAsGapsWithoutFailing()
    {
        // Layer 0 has one expert (a grey cell, no point); the second adapter has no pair anywhere.
        var mixed = Redundancy.Compute(MakeAdapter([1, 2, 4], modules: ["q_proj", "down_proj"]));
        var single = Redundancy.Compute(MakeAdapter([1, 1], modules: ["q_proj"]));
        string dir = TestUtil.TempDir();
        Figures.RedundancyHeatmap(mixed, Path.Combine(dir, "mixed_heatmap.png"));
        Figures.RedundancyByLayer(mixed, Path.Combine(dir, "mixed_by_layer.png"));
        Figures.RedundancyHeatmap(single, Path.Combine(dir, "single_heatmap.png"));
        Figures.RedundancyByLayer(single, Path.Combine(dir, "single_by_layer.png"));
        Figures.CompareRedundancy([mixed, single], ["mixed", "single"], Path.Combine(dir, "compare.png"));
        foreach (var f in Directory.GetFiles(dir, "*.png"))
            Assert.True(PngSize(f).Width > 0);
        Assert.Equal(5, Directory.GetFiles(dir, "*.png").Length);
    }

    [Fact]
    public void Runner_WritesCsvJsonAndFigures_WithRoutingFromTheSeam()
    {
        string adapter = TestUtil.Fixture("llama-tiny-mola");
        string output = Path.Combine(TestUtil.TempDir(), "out");
        var result = AnalysisRunner.Run(adapter, output, () => HandRouting());
        var report = result.Redundancy;

        var csv = File.ReadAllLines(Path.Combine(output, "redundancy.csv"));
        Assert.Equal("layer,module,experts,mean_pairwise_frobenius", csv[0]);
        Assert.Equal(1 + 21, csv.Length);
        Assert.Equal("0,q_proj,2,", csv[1][..11]);
        for (int i = 0; i < 21; i++)
        {
            var f = csv[1 + i].Split(',');
            var m = report.Modules[i];
            Assert.Equal((m.Layer, m.Module, m.Experts), (int.Parse(f[0]), f[1], int.Parse(f[2])));
            Assert.Equal(m.MeanPairwiseFrobenius!.Value, double.Parse(f[3], CultureInfo.InvariantCulture));
        }

        var routing = File.ReadAllLines(Path.Combine(output, "routing.csv"));
        Assert.Equal("layer,module,expert,selections,tokens,frequency,mean_weight", routing[0]);
        Assert.Equal("0,q_proj,0,3,4,0.75,", routing[1][..20]);
        Assert.Equal(1.3 / 3, double.Parse(routing[1].Split(',')[6], CultureInfo.InvariantCulture), 1e-6);
        Assert.Equal("0,q_proj,3,0,4,0,", routing[4]);

        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "analysis.json")));
        var red = json.RootElement.GetProperty("redundancy");
        Assert.Equal(21, red.GetArrayLength());
        Assert.Equal(0, red[0].GetProperty("layer").GetInt32());
        Assert.Equal("q_proj", red[0].GetProperty("module").GetString());
        Assert.Equal(report.Modules[0].MeanPairwiseFrobenius!.Value, red[0].GetProperty("mean_pairwise_frobenius").GetDouble());
        Assert.Equal(3, json.RootElement.GetProperty("redundancy_by_layer").GetArrayLength());
        var rout = json.RootElement.GetProperty("routing");
        Assert.Equal(8, rout.GetArrayLength());
        Assert.Equal(3, rout[0].GetProperty("selections").GetInt64());
        Assert.Equal(JsonValueKind.Null, rout[3].GetProperty("mean_weight").ValueKind);
        var figures = json.RootElement.GetProperty("figures").EnumerateArray().Select(x => x.GetString()!).ToList();
        Assert.Equal([AnalysisRunner.HeatmapFile, AnalysisRunner.ByLayerFile, AnalysisRunner.RoutingFile], figures);
        foreach (var f in figures) PngSize(Path.Combine(output, f));
    }

    [Fact]
    public void Runner_SingleExpertLayer_WritesEmptyCsvCellAndJsonNull()
    {
        string adapter = MakeAdapter([1, 3], modules: ["q_proj"]);
        string output = TestUtil.TempDir();
        AnalysisRunner.Run(adapter, output);
        var csv = File.ReadAllLines(Path.Combine(output, "redundancy.csv"));
        Assert.Equal("0,q_proj,1,", csv[1]);
        Assert.False(File.Exists(Path.Combine(output, "routing.csv")));
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "analysis.json")));
        Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("redundancy")[0].GetProperty("mean_pairwise_frobenius").ValueKind);
        Assert.Equal(0, json.RootElement.GetProperty("routing").GetArrayLength());
    }

    [Fact]
    public void AnalyzeCommand_Compare_WritesOneCsvWithAnAdapterColumn()
    {
        string a = MakeAdapter([2, 2], modules: ["q_proj"], seed: 4);
        string b = MakeAdapter([4, 4], modules: ["q_proj"], seed: 5);
        string output = TestUtil.TempDir();
        var root = new RootCommand { AnalyzeCommand.Create() };
        int rc = root.Parse(["analyze", "--compare", a, b, "--output", output]).Invoke();
        Assert.Equal(0, rc);
        var csv = File.ReadAllLines(Path.Combine(output, "redundancy.csv"));
        Assert.Equal("adapter,layer,module,experts,mean_pairwise_frobenius", csv[0]);
        Assert.Equal(5, csv.Length);
        Assert.StartsWith(Path.GetFileName(a) + ",0,q_proj,2,", csv[1]);
        Assert.StartsWith(Path.GetFileName(b) + ",1,q_proj,4,", csv[4]);
        PngSize(Path.Combine(output, AnalysisRunner.CompareFile));
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void AnalyzeCommand_WithRouting_NamesEveryFileItWrote()
    {
        string output = Path.Combine(TestUtil.TempDir(), "out");
        var r = CliRunner.Run("analyze", "--adapter", TestUtil.Fixture("llama-tiny-mola"), "--base-model", TestUtil.Fixture("llama-tiny"),
            "--data", TestUtil.Fixture("train", "small.jsonl"), "--output", output);
        Assert.True(r.ExitCode == 0, r.ToString());
        var wrote = (r.Stdout + r.Stderr).Split('\n').Single(l => l.StartsWith("wrote "));
        var files = Directory.GetFiles(output).Select(Path.GetFileName).ToList();
        Assert.Contains("routing.csv", files);
        foreach (var f in files) Assert.Contains(f!, wrote);
    }

    [Fact]
    public void Redundancy_ExpertsNotNumberedFromZeroUp_NamesTheNumbersFound()
    {
        string dir = MakeAdapter([3, 3], modules: ["q_proj"]);
        string file = Path.Combine(dir, "adapter_model.safetensors");
        var t = TestUtil.ReadAll(file);
        foreach (var ab in new[] { "A", "B" })
        {
            t[$"{Prefix(0, "q_proj")}.lora_{ab}.5.weight"] = t[$"{Prefix(0, "q_proj")}.lora_{ab}.2.weight"];
            t.Remove($"{Prefix(0, "q_proj")}.lora_{ab}.2.weight");
        }
        SafeTensorsFile.Save(file, t);
        var e = Assert.Throws<MolaException>(() => Redundancy.Compute(dir));
        Assert.Contains($"\"{Prefix(0, "q_proj")}.lora_A.2.weight\" is missing (3 experts found for this module, numbered 0, 1, 5)", e.Message);
    }

    [Theory]
    [InlineData("nan")]
    [InlineData("layer index")]
    public void Redundancy_DamagedAdapter_IsANamedError(string damage)
    {
        string dir = MakeAdapter([2, 2], modules: ["q_proj"]);
        string file = Path.Combine(dir, "adapter_model.safetensors");
        var t = TestUtil.ReadAll(file);
        string name = $"{Prefix(1, "q_proj")}.lora_B.1.weight";
        if (damage == "nan") t[name][0, 0] = double.PositiveInfinity;
        else { t[$"{Prefix(200000000, "q_proj")}.lora_A.0.weight"] = t[name].t().contiguous(); }
        SafeTensorsFile.Save(file, t);
        var e = Assert.Throws<MolaException>(() => Redundancy.Compute(dir));
        Assert.Contains(damage == "nan" ? $"\"{name}\" holds NaN or infinite values" : "names layer 200000000 (no model has more than 10000 layers", e.Message);
    }

    [Fact]
    public void AnalyzeCommand_NeitherAdapterNorCompare_ExitsWithUserError()
    {
        var root = new RootCommand { AnalyzeCommand.Create() };
        Assert.Equal(1, root.Parse(["analyze", "--output", TestUtil.TempDir()]).Invoke());
        Assert.Equal(1, root.Parse(["analyze", "--adapter", "/nonexistent-adapter", "--output", TestUtil.TempDir()]).Invoke());
    }
}
