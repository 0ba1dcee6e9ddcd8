using System.Text.Json;
using Mola.Adapters;
using Mola.Models;
using Xunit;

namespace Mola.Tests;

public class AutoAllocationTests
{
    [Fact]
    public void Allocate_SplitsByAlphaToTheBeta_RoundingToTheTotal()
    {
        // 2^2.5, 3^2.5, 4^2.5 = 5.657, 15.588, 32 (sum 53.245): 9 experts give shares 0.956, 2.635, 5.409; floors (at least 1)
        // 1, 2, 5 leave one expert, which goes to the largest remainder (layer 1, 0.635).
        Assert.Equal([1, 3, 5], AutoAllocation.Allocate([2, 3, 4], 9, 2.5));
        // beta 0 is uniform: 10 over 4 is 2.5 each, the two left over go to the lower layers on the tie.
        Assert.Equal([3, 3, 2, 2], AutoAllocation.Allocate([1, 2, 3, 4], 10, 0));
        Assert.Equal([2, 2, 2, 2], AutoAllocation.Allocate([1, 2, 3, 4], 8, 0));
    }

    [Fact]
    public void Allocate_KeepsOneExpertPerLayer_TakingTheExcessFromTheLargest()
    {
        // Shares 0.0126, 0.0126, 3.975: the minimum of 1 makes 1, 1, 3 = 5 > 4, so the only layer above 1 gives one back.
        Assert.Equal([1, 1, 2], AutoAllocation.Allocate([1, 1, 10], 4, 2.5));
        Assert.Equal([1, 1, 1], AutoAllocation.Allocate([1, 1, 10], 3, 2.5));
        var e = Assert.Throws<MolaException>(() => AutoAllocation.Allocate([1, 2, 3], 2, 2.5));
        Assert.Contains("2 experts for 3 layers (every layer needs at least one; give auto:3 or more)", e.Message);
    }

    [Fact]
    public void Allocate_ManyCases_SumIsExact_MinimumOne_WithinOneOfTheShare()
    {
        var rng = new Random(5);
        for (int c = 0; c < 500; c++)
        {
            int layers = rng.Next(1, 40);
            var alpha = Enumerable.Range(0, layers).Select(_ => 1.5 + 4 * rng.NextDouble()).ToArray();
            int total = layers + rng.Next(0, 8 * layers);
            double beta = rng.NextDouble() * 4;
            var n = AutoAllocation.Allocate(alpha, total, beta);
            Assert.Equal(total, n.Sum());
            Assert.All(n, x => Assert.True(x >= 1));
            double sum = alpha.Sum(a => Math.Pow(a, beta));
            var share = alpha.Select(a => total * Math.Pow(a, beta) / sum).ToArray();
            bool lifted = share.Any(s => s < 1);
            for (int l = 0; l < layers; l++)
            {
                // Rounding moves a count less than one from its share; where the minimum of 1 lifted some layer, the experts
                // it took come from the others, which then may fall further below their shares but never rise above them.
                if (!lifted) Assert.True(Math.Abs(n[l] - share[l]) < 1, $"case {c} layer {l}: {n[l]} experts for a share of {share[l]}");
                else if (share[l] >= 1) Assert.True(n[l] <= Math.Ceiling(share[l]), $"case {c} layer {l}: {n[l]} experts for a share of {share[l]}");
            }
        }
    }

    [Fact]
    public void TopKFor_IsTwoWhereALayerHasSeveralExperts()
    {
        Assert.Equal([1, 2, 2], AutoAllocation.TopKFor([1, 2, 7]));
    }

    [Theory]
    [InlineData("auto:160", true, 160)]
    [InlineData(" AUTO ", true, null)]
    [InlineData("2468", false, null)]
    [InlineData("square:8", false, null)]
    public void TryParse_ReadsAutoSpecs(string spec, bool auto, int? total)
    {
        Assert.Equal(auto, AutoAllocation.TryParse(spec, "--experts", out int? t));
        Assert.Equal(total, t);
    }

    [Theory]
    [InlineData("auto:0")]
    [InlineData("auto:x")]
    [InlineData("auto:-3")]
    public void TryParse_BadTotal_IsANamedError(string spec)
    {
        var e = Assert.Throws<MolaException>(() => AutoAllocation.TryParse(spec, "--experts", out _));
        Assert.StartsWith($"--experts {spec}: ", e.Message);
    }

    /// <summary>The budget search against the planner's exact counts: the answer is the largest T, by brute force over
    /// every T, whose count is within the budget, also where per-layer ranks make the count not monotone in T.</summary>
    [Theory]
    [InlineData("8")]
    [InlineData("2,16,4")]
    public void LargestTotalWithin_IsTheLargestTotalThePlannerFits(string rankSpec)
    {
        var config = ModelConfig.Load(TestUtil.Fixture("llama-tiny"));
        var rank = ExpertAllocation.Parse(rankSpec, 3, "--rank");
        string[] targets = ["q_proj", "down_proj"];
        double[] alpha = [2.2, 3.1, 4.4];
        long Count(int t)
        {
            var e = AutoAllocation.Allocate(alpha, t, 2.5);
            return ParameterCount.Mola(config, e, AutoAllocation.TopKFor(e), rank, targets).Total;
        }
        // One expert of q_proj (64 -> 64) and down_proj (160 -> 64) at rank r: r (128 + 224) + 64 + 160 (router rows).
        if (rankSpec == "8") Assert.Equal(3L * (8 * 352 + 224), Count(3));
        long cheapest = rank.Min(r => r * 352L + 224);
        for (long budget = Count(3); budget < Count(60); budget += 997)
        {
            int expected = Enumerable.Range(3, 200).Where(t => Count(t) <= budget).Max();
            Assert.Equal(expected, AutoAllocation.LargestTotalWithin(budget, 3, cheapest, Count));
        }
        var e = Assert.Throws<MolaException>(() => AutoAllocation.LargestTotalWithin(Count(3) - 1, 3, cheapest, Count));
        Assert.Contains("even one expert a layer needs", e.Message);
    }

    /// <summary>auto:T through the one spec builder: the split of the measured layer quality, stored with how it was
    /// derived, and kept by a save and load of adapter_config.json.</summary>
    [Fact]
    public void Build_AutoTotal_AllocatesByLayerQuality_AndRecordsIt()
    {
        string dir = LayerQualityTests.PrescribedModel([2, 3, 4]);
        var lines = new List<string>();
        var config = (AdapterSpec.Paper with { Experts = "auto:9", Targets = "q_proj", XminSearch = "all" }).Build(3, dir, lines.Add);
        var quality = Analysis.LayerQuality.Compute(dir, ["q_proj"], Analysis.XminSearch.All);
        var expected = AutoAllocation.Allocate(quality.Alphas, 9, 2.5);
        Assert.Equal(expected, config.NumExperts);
        Assert.Equal(9, config.NumExperts.Sum());
        Assert.Equal(AutoAllocation.TopKFor(expected), config.TopK);
        var alloc = config.Allocation!;
        Assert.Equal(9, alloc["total_experts"]!.GetValue<int>());
        Assert.Equal(2.5, alloc["beta"]!.GetValue<double>());
        Assert.Equal(ParameterCount.Mola(ModelConfig.Load(dir), expected, config.TopK, config.Rank, ["q_proj"]).Total, alloc["trainable_parameters"]!.GetValue<long>());
        Assert.Equal(quality.Alphas, alloc["layer_alpha"]!.AsArray().Select(a => a!.GetValue<double>()).ToArray());
        Assert.Contains(lines, l => l.StartsWith("auto allocation "));

        string saved = TestUtil.TempDir();
        config.Save(saved);
        var loaded = AdapterConfig.Load(saved);
        Assert.Equal(alloc.ToJsonString(), loaded.Allocation!.ToJsonString());

        Assert.Contains("--budget-params applies to --experts auto", Assert.Throws<MolaException>(() =>
            (AdapterSpec.Paper with { Experts = "2468", BudgetParams = 100 }).Build(4, dir)).Render(Mola.Cli.Cli.OptionName));
        Assert.Contains("--experts auto needs --budget-params", Assert.Throws<MolaException>(() =>
            (AdapterSpec.Paper with { Experts = "auto", Targets = "q_proj" }).Build(3, dir)).Render(Mola.Cli.Cli.OptionName));
        Assert.Contains("--allocation-beta must be a finite number, 0 or more", Assert.Throws<MolaException>(() =>
            (AdapterSpec.Paper with { Experts = "auto:9", AllocationBeta = double.NaN }).Build(3, dir)).Render(Mola.Cli.Cli.OptionName));
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void ParamsAndAllocate_Budget_PrintTheLargestFittingAllocation()
    {
        string dir = LayerQualityTests.PrescribedModel([2, 3, 4]);
        var config = ModelConfig.Load(dir);
        // One q_proj expert at rank 8: 8 (64 + 64) + 64 router weights = 1088, the same in every layer: 10 experts fit 10,880.
        var r = CliRunner.Run(["allocate", "--base-model", dir, "--targets", "q_proj", "--budget-params", "11000", "--json"], TimeSpan.FromMinutes(3));
        Assert.True(r.ExitCode == 0, r.ToString());
        var json = r.LastJson();
        Assert.Equal(10, json.GetProperty("total_experts").GetInt32());
        Assert.Equal(10 * 1088, json.GetProperty("trainable_parameters").GetInt64());
        var experts = json.GetProperty("experts").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        Assert.Equal(10, experts.Sum());
        Assert.Contains($"for train: --experts {string.Join(",", experts)}", r.Stderr + r.Stdout);

        var p = CliRunner.Run(["params", "--base-model", dir, "--targets", "q_proj", "--experts", "auto:10", "--json"], TimeSpan.FromMinutes(3));
        Assert.True(p.ExitCode == 0, p.ToString());
        Assert.Equal(10 * 1088, p.LastJson().GetProperty("total").GetInt64());
        Assert.Equal(experts, p.LastJson().GetProperty("layers").EnumerateArray().Select(l => l.GetProperty("experts").GetInt32()).ToArray());
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void Train_AutoExperts_WritesTheAllocationIntoAdapterConfig()
    {
        string output = Path.Combine(TestUtil.TempDir(), "run");
        var r = CliRunner.Run(["train", "--base-model", TestUtil.Fixture("llama-tiny"), "--data", TestUtil.Fixture("train", "small.jsonl"),
            "--output", output, "--experts", "auto:7", "--rank", "4", "--batch-size", "4", "--micro-batch-size", "2", "--cutoff-len", "64",
            "--max-steps", "1", "--seed", "3"], TimeSpan.FromMinutes(3));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("auto allocation ", r.Stderr + r.Stdout);
        using var cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "adapter_config.json")));
        var experts = cfg.RootElement.GetProperty("num_experts").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        Assert.Equal(7, experts.Sum());
        var alloc = cfg.RootElement.GetProperty("allocation");
        Assert.Equal(7, alloc.GetProperty("total_experts").GetInt32());
        var alpha = alloc.GetProperty("layer_alpha").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        Assert.Equal(AutoAllocation.Allocate(alpha, 7, 2.5), experts);
        Assert.Equal(AutoAllocation.TopKFor(experts), cfg.RootElement.GetProperty("top_k").EnumerateArray().Select(x => x.GetInt32()).ToArray());
    }
}
