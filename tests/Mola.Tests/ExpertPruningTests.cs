using Mola.Adapters;
using Mola.Analysis;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class ExpertPruningTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    /// <summary>An adapter for llama-tiny (3 layers, all seven modules, rank 4) from per-layer, per-module expert
    /// factors and router rows given by <paramref name="make"/>(layer, module, in, out) as (A list, B list, router).</summary>
    static string WriteAdapter(int[] experts, int[] topK, Func<int, string, int, int, (Tensor[] A, Tensor[] B, Tensor Router)> make)
    {
        var model = ModelConfig.Load(Llama);
        var config = new AdapterConfig
        {
            Kind = AdapterKind.Mola,
            BaseModelNameOrPath = "llama-tiny",
            TargetModules = [.. TargetModules.All],
            Rank = [4, 4, 4],
            NumExperts = experts,
            TopK = topK,
            LoraDropout = 0,
        };
        var tensors = new Dictionary<string, Tensor>();
        for (int l = 0; l < 3; l++)
            foreach (var m in TargetModules.All)
            {
                var (i, o) = TargetModules.Shape(model, m);
                var (a, b, router) = make(l, m, i, o);
                for (int e = 0; e < experts[l]; e++)
                {
                    tensors[$"{AdapterFile.Prefix(l, m)}.lora_A.{e}.weight"] = a[e];
                    tensors[$"{AdapterFile.Prefix(l, m)}.lora_B.{e}.weight"] = b[e];
                }
                tensors[$"{AdapterFile.Prefix(l, m)}.router.weight"] = router;
            }
        string dir = TestUtil.TempDir();
        config.Save(dir);
        SafeTensorsFile.Save(Path.Combine(dir, AdapterFile.WeightsFile), tensors);
        return dir;
    }

    /// <summary>Layer 0 has three experts whose router rows are r, -r and r/2: the third's logit lies strictly between
    /// the other two, so with top-1 it is never chosen (zero gate), and it is the near-copy of expert 0 (the closest
    /// pair). Dropping it by the routing statistics must leave the model's logits exactly as they were.</summary>
    [Fact]
    public void Drop_ExpertWithZeroGate_LeavesTheOutputUnchanged()
    {
        var gen = new Generator().manual_seed(4);
        string dir = WriteAdapter([3, 2, 2], [1, 1, 1], (l, m, i, o) =>
        {
            int n = l == 0 ? 3 : 2;
            var a = Enumerable.Range(0, n).Select(_ => randn(4, i, generator: gen)).ToArray();
            var b = Enumerable.Range(0, n).Select(_ => randn(o, 4, generator: gen) * 0.05).ToArray();
            var r = randn(i, generator: gen);
            if (l != 0) return (a, b, randn(2, i, generator: gen));
            a[2] = a[0] + 1e-3 * randn(4, i, generator: gen);
            b[2] = b[0] + 1e-4 * randn(o, 4, generator: gen);
            return (a, b, stack([r, -r, 0.5 * r]));
        });

        string routingCsv = Path.Combine(TestUtil.TempDir(), "routing.csv");
        var texts = RoutingRun.ReadTexts(TestUtil.Fixture("train", "small.jsonl"), PromptTemplate.Alpaca);
        using (var model = ModelLoader.Load(Llama))
        {
            var adapter = AdapterModel.Load(model, dir);
            var tok = MolaTokenizer.Load(Llama, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
            var stats = RoutingRun.Collect(adapter, tok, texts);
            Assert.All(stats.Rows().Where(r => r.Layer == 0 && r.Expert == 2), r => Assert.Equal(0, r.Selections));
            Assert.All(stats.Rows().Where(r => r.Layer == 0 && r.Expert < 2), r => Assert.True(r.Selections > 0));
            AnalysisRunner.WriteRoutingCsv(routingCsv, stats);
        }

        string pruned = Path.Combine(TestUtil.TempDir(), "pruned");
        var config = AdapterConfig.Load(dir);
        var result = ExpertPruning.Prune(dir, pruned, keepExperts: 6, maxRedundancy: null, ExpertPruning.ReadSelections(routingCsv, config.NumExperts));
        var step = Assert.Single(result.Steps);
        Assert.Equal((0, 0, 2, false), (step.Layer, step.Kept, step.Removed, step.Merged));
        Assert.Equal([2, 2, 2], result.ExpertsAfter);

        // The per-expert loop runs only the chosen experts, so the sums are the same operations: equal to rounding.
        // The fast path multiplies every expert by its gate in one stacked product, whose shape (and so its float
        // summation order) changes with the expert count: equal up to float32 rounding, amplified through three layers (2e-5 seen).
        var ids = randint(3, 400, [2, 24], generator: new Generator().manual_seed(9));
        using var before = Logits(dir, ids, loop: true);
        using var after = Logits(pruned, ids, loop: true);
        Assert.True(TestUtil.MaxAbsDiff(before, after) <= 1e-6, $"loop path: max diff {TestUtil.MaxAbsDiff(before, after)}");
        using var fastBefore = Logits(dir, ids);
        using var fastAfter = Logits(pruned, ids);
        Assert.True(TestUtil.RelDiff(fastBefore, fastAfter) <= 1e-4, $"fast path: relative diff {TestUtil.RelDiff(fastBefore, fastAfter)}");
        // The pruned adapter is a normal one: analysis reads it.
        Assert.Equal(3, Redundancy.Compute(pruned).Layers.Count);
    }

    /// <summary>Merging: expert 1 of layer 0 is expert 0 with B doubled (distance ||B_0 A_0||_F, the smallest), so their
    /// mean update 1.5 B_0 A_0 has rank r and the merged expert must be exactly it, with the mean router row; layers 1
    /// and 2 are copies of each other, so the next merge is a tie and goes to the lower layer, 1. Top-k 2 comes down to
    /// 1 where one expert is left.</summary>
    [Fact]
    public void Merge_ClosestPair_IsTheirMeanUpdate_LowerLayerFirstOnATie()
    {
        var gen = new Generator().manual_seed(8);
        var upper = new Dictionary<string, (Tensor[], Tensor[], Tensor)>();
        string dir = WriteAdapter([2, 3, 3], [2, 2, 2], (l, m, i, o) =>
        {
            if (l == 0)
            {
                var a0 = randn(4, i, generator: gen) * 0.1;
                var b0 = randn(o, 4, generator: gen) * 0.1;
                return ([a0, a0.clone()], [b0, 2 * b0], randn(2, i, generator: gen));
            }
            if (!upper.TryGetValue(m, out var t))
                upper[m] = t = (Enumerable.Range(0, 3).Select(_ => randn(4, i, generator: gen)).ToArray(),
                                Enumerable.Range(0, 3).Select(_ => randn(o, 4, generator: gen)).ToArray(), randn(3, i, generator: gen));
            return t;
        });
        var original = TestUtil.ReadAll(Path.Combine(dir, AdapterFile.WeightsFile));

        string pruned = Path.Combine(TestUtil.TempDir(), "pruned");
        var result = ExpertPruning.Prune(dir, pruned, keepExperts: 6, maxRedundancy: null);
        Assert.Equal(2, result.Steps.Count);
        Assert.Equal((0, 0, 1, true), (result.Steps[0].Layer, result.Steps[0].Kept, result.Steps[0].Removed, result.Steps[0].Merged));
        Assert.Equal(1, result.Steps[1].Layer);
        Assert.Equal([1, 2, 3], result.ExpertsAfter);
        Assert.Equal([1, 2, 2], result.TopKAfter);

        var saved = AdapterConfig.Load(pruned);
        Assert.Equal([1, 2, 3], saved.NumExperts);
        Assert.Equal([1, 2, 2], saved.TopK);
        var t = TestUtil.ReadAll(Path.Combine(pruned, AdapterFile.WeightsFile));
        foreach (var m in TargetModules.All)
        {
            string p = AdapterFile.Prefix(0, m);
            using var expected = 1.5 * original[$"{p}.lora_B.0.weight"].to(ScalarType.Float64).matmul(original[$"{p}.lora_A.0.weight"].to(ScalarType.Float64));
            using var merged = t[$"{p}.lora_B.0.weight"].to(ScalarType.Float64).matmul(t[$"{p}.lora_A.0.weight"].to(ScalarType.Float64));
            Assert.True(TestUtil.MaxAbsDiff(expected, merged) <= 1e-6, $"{m}: {TestUtil.MaxAbsDiff(expected, merged)}");
            Assert.Equal(4, t[$"{p}.lora_A.0.weight"].shape[0]);
            using var meanRow = original[$"{p}.router.weight"].mean([0], keepdim: true);
            Assert.True(TestUtil.MaxAbsDiff(meanRow, t[$"{p}.router.weight"]) <= 1e-7);
            Assert.False(t.ContainsKey($"{p}.lora_A.1.weight"));
        }
        // The pruned adapter loads onto the model and runs.
        using var logits = Logits(pruned, randint(3, 400, [1, 8]));
        Assert.Equal(400, logits.shape[^1]);
    }

    [Fact]
    public void MaxRedundancy_PrunesOnlyPairsCloserThanTheLimit_AndBadRequestsAreNamed()
    {
        var gen = new Generator().manual_seed(2);
        string dir = WriteAdapter([2, 2, 2], [1, 1, 1], (l, m, i, o) =>
        {
            var a0 = randn(4, i, generator: gen);
            var b0 = randn(o, 4, generator: gen);
            // Layer 1's experts differ by a little, the others by a lot.
            var b1 = l == 1 ? b0 + 1e-5 * randn(o, 4, generator: gen) : randn(o, 4, generator: gen);
            return ([a0, a0.clone()], [b0, b1], randn(2, i, generator: gen));
        });
        var result = ExpertPruning.Prune(dir, Path.Combine(TestUtil.TempDir(), "p"), keepExperts: null, maxRedundancy: 0.1);
        Assert.Equal(1, Assert.Single(result.Steps).Layer);
        Assert.Equal([2, 1, 2], result.ExpertsAfter);

        Assert.Contains("--keep-experts 2: the adapter has 6 experts over 3 layers", Assert.Throws<MolaException>(() =>
            ExpertPruning.Prune(dir, TestUtil.TempDir(), 2, null)).Render(Mola.Cli.Cli.OptionName));
        Assert.Contains("give one of --keep-experts T or --max-redundancy X", Assert.Throws<MolaException>(() =>
            ExpertPruning.Prune(dir, TestUtil.TempDir(), 4, 0.5)).Render(Mola.Cli.Cli.OptionName));
        string badCsv = Path.Combine(TestUtil.TempDir(), "routing.csv");
        File.WriteAllText(badCsv, "layer,module,expert,selections,tokens,frequency,mean_weight\n0,q_proj,5,3,10,0.3,0.5\n");
        Assert.Contains("routing.csv:2: layer 0 expert 5 is not in the adapter", Assert.Throws<MolaException>(() =>
            ExpertPruning.ReadSelections(badCsv, [2, 2, 2])).Message);
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void PruneCommand_WritesAnAdapterThatGenerateAndAnalyzeRead()
    {
        string output = Path.Combine(TestUtil.TempDir(), "pruned");
        var r = CliRunner.Run(["prune", "--adapter", TestUtil.Fixture("llama-tiny-mola"), "--output", output, "--keep-experts", "10", "--json"], TimeSpan.FromMinutes(3));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(10, r.LastJson().GetProperty("experts_after").EnumerateArray().Sum(x => x.GetInt32()));
        var g = CliRunner.Run(["generate", "--base-model", Llama, "--adapter", output, "--prompt", "hello", "--max-new-tokens", "4"], TimeSpan.FromMinutes(3));
        Assert.True(g.ExitCode == 0, g.ToString());
        var a = CliRunner.Run(["analyze", "--adapter", output, "--output", Path.Combine(TestUtil.TempDir(), "an")], TimeSpan.FromMinutes(3));
        Assert.True(a.ExitCode == 0, a.ToString());
        var again = CliRunner.Run(["prune", "--adapter", TestUtil.Fixture("llama-tiny-mola"), "--output", output, "--keep-experts", "10"], TimeSpan.FromMinutes(3));
        Assert.Equal(1, again.ExitCode);
        Assert.Contains($"--output {output}: already holds an adapter", again.Stderr);
    }

    static Tensor Logits(string adapterDir, Tensor ids, bool loop = false)
    {
        using var model = ModelLoader.Load(Llama);
        var adapter = AdapterModel.Load(model, adapterDir);
        adapter.UseLoopPath(loop);
        using var _ = no_grad();
        using var output = adapter.Forward(ids);
        return output.Logits.detach().clone();
    }
}
