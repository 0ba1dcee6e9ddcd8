using System.Text.Json;
using Mola.Adapters;
using Mola.Models;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class ParamsTests
{
    // LLaMA-2-7B's config.json (the fields the counts use); the paper's parameter figures are for this model.
    const string Llama2_7B = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
         "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
         "rms_norm_eps": 1e-05, "max_position_embeddings": 4096, "tie_word_embeddings": false, "torch_dtype": "float16"}
        """;

    static string Llama2Dir()
    {
        string dir = TestUtil.TempDir();
        File.WriteAllText(Path.Combine(dir, "config.json"), Llama2_7B);
        return dir;
    }

    static ParameterCounts Mola7B(string experts)
    {
        var c = ModelConfig.Load(Llama2Dir());
        return ParameterCount.Mola(c, ExpertAllocation.Parse(experts, 32, "--experts"),
            ExpertAllocation.Parse("2", 32, "--top-k"), ExpertAllocation.Parse("8", 32, "--rank"), TargetModules.All);
    }

    [Theory]
    [InlineData("2468")]
    [InlineData("8228")]
    [InlineData("inverted-triangle")]
    [InlineData("8642")]
    [InlineData("2882")]
    [InlineData("diamond")]
    public void ShapedAllocationsOn7BGiveThePapersCount(string experts)
    {
        var p = Mola7B(experts);
        Assert.Equal(99_942_400, p.Lora);
        Assert.Equal(5_693_440, p.Router);
        Assert.Equal(105_635_840, p.Total);
        Assert.Equal(6_738_415_616, p.Base);
        Assert.Equal(100.0 * 105_635_840 / 6_738_415_616, p.Percent, 12);
    }

    [Fact]
    public void SquareEightOn7BGivesThePapersCount()
    {
        Assert.Equal(169_017_344, Mola7B("8888").Total);
        Assert.Equal(169_017_344, Mola7B("square:8").Total);
    }

    [Fact]
    public void PerLayerBreakdownFollowsTheAllocation()
    {
        var p = Mola7B("2468");
        Assert.Equal(32, p.Layers.Count);
        // Layer 0 has 2 experts: 2 * 8 * (4*(4096+4096) + 3*(4096+11008)) LoRA, 2 * (6*4096 + 11008) router.
        Assert.Equal(2L * 8 * (4 * 8192 + 3 * 15104), p.Layers[0].Lora);
        Assert.Equal(2L * (6 * 4096 + 11008), p.Layers[0].Router);
        Assert.Equal(4 * p.Layers[0].Total, p.Layers[31].Total);
        Assert.Equal((2, 2, 8), (p.Layers[7].Experts, p.Layers[7].TopK, p.Layers[7].Rank));
        Assert.Equal(4, p.Layers[8].Experts);
    }

    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("mistral-tiny")]   // grouped-query attention: k and v are narrower than hidden
    [InlineData("gemma-tiny")]     // head_dim 32 with hidden 64 and a tied head
    public void BaseCountEqualsTheElementsInTheCheckpoint(string fixture)
    {
        using var checkpoint = Checkpoint.Open(TestUtil.Fixture(fixture));
        long stored = checkpoint.Names.Sum(n => checkpoint.Info(n).NumElements);
        Assert.Equal(stored, ParameterCount.Base(ModelConfig.Load(TestUtil.Fixture(fixture))));
    }

    [Fact]
    public void MolaCountEqualsTheElementsInTheFixtureAdapter()
    {
        // llama-tiny-mola: experts [2,4,8], top_k [1,2,2], r [4,4,8] on all seven modules.
        using var adapter = SafeTensorsFile.Open(TestUtil.Fixture("llama-tiny-mola", "adapter_model.safetensors"));
        long lora = adapter.Tensors.Values.Where(t => t.Name.Contains(".lora_")).Sum(t => t.NumElements);
        long router = adapter.Tensors.Values.Where(t => t.Name.Contains(".router.")).Sum(t => t.NumElements);
        var p = ParameterCount.Mola(ModelConfig.Load(TestUtil.Fixture("llama-tiny")), [2, 4, 8], [1, 2, 2], [4, 4, 8], TargetModules.All);
        Assert.Equal(lora, p.Lora);
        Assert.Equal(router, p.Router);
    }

    [Fact]
    public void LoraCountOnLlamaTinyByHand()
    {
        // llama-tiny: hidden 64, intermediate 160, 4 heads of 16, 4 KV heads, 3 layers.
        const int hidden = 64, inter = 160;
        long attention = 4 * (hidden + hidden), mlp = 2 * (hidden + inter) + (inter + hidden);
        var c = ModelConfig.Load(TestUtil.Fixture("llama-tiny"));

        var all = ParameterCount.Lora(c, [8, 8, 8], TargetModules.All);
        Assert.Equal(3 * 8 * (attention + mlp), all.Total);
        Assert.Equal(0, all.Router);
        Assert.All(all.Layers, l => Assert.Null(l.Experts));

        var qv = ParameterCount.Lora(c, [2, 4, 8], TargetModules.Parse("q_proj,v_proj"));
        Assert.Equal((2 + 4 + 8) * 2L * (hidden + hidden), qv.Total);
    }

    [Fact]
    public void TargetsSubsetOnGroupedQueryAttention()
    {
        // mistral-tiny: hidden 64, 4 heads of 16, 2 KV heads: k_proj is 64 -> 32.
        var c = ModelConfig.Load(TestUtil.Fixture("mistral-tiny"));
        var p = ParameterCount.Mola(c, [2, 2, 2], [1, 1, 1], [4, 4, 4], ["k_proj"]);
        Assert.Equal(3 * 2 * 4 * (64 + 32), p.Lora);
        Assert.Equal(3 * 2 * 64, p.Router);
    }

    [Fact]
    public void TopKAboveExpertsIsRefused()
    {
        var c = ModelConfig.Load(TestUtil.Fixture("llama-tiny"));
        var e = Assert.Throws<MolaException>(() => ParameterCount.Mola(c, [2, 4, 8], [2, 5, 2], [8, 8, 8], TargetModules.All));
        Assert.StartsWith("layer 1:", e.Message);
    }

    [Fact]
    public void TargetListsAreCheckedAndPutInCheckpointOrder()
    {
        Assert.Equal(["q_proj", "v_proj", "down_proj"], TargetModules.Parse("down_proj, v_proj,q_proj"));
        Assert.Equal(TargetModules.All, TargetModules.Parse("all"));
        Assert.Contains("unknown module \"lm_head\"", Assert.Throws<MolaException>(() => TargetModules.Parse("q_proj,lm_head")).Message);
        Assert.Contains("twice", Assert.Throws<MolaException>(() => TargetModules.Parse("q_proj,q_proj")).Message);
        Assert.Contains("empty", Assert.Throws<MolaException>(() => TargetModules.Parse(" , ")).Message);
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void CliPrintsCountsAsJsonFromConfigAlone()
    {
        var (code, stdout, stderr) = RunCli("params", "--base-model", Llama2Dir(), "--experts", "2468", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout.TrimEnd().Split('\n')[^1]);
        var r = doc.RootElement;
        Assert.Equal(99_942_400, r.GetProperty("lora").GetInt64());
        Assert.Equal(5_693_440, r.GetProperty("router").GetInt64());
        Assert.Equal(105_635_840, r.GetProperty("total").GetInt64());
        Assert.Equal(6_738_415_616, r.GetProperty("base").GetInt64());
        Assert.Equal(100.0 * 105_635_840 / 6_738_415_616, r.GetProperty("percent").GetDouble(), 10);
        var layers = r.GetProperty("layers");
        Assert.Equal(32, layers.GetArrayLength());
        Assert.Equal(8, layers[31].GetProperty("experts").GetInt32());
        Assert.Equal(2, layers[31].GetProperty("top_k").GetInt32());
        Assert.True(r.GetProperty("memory").GetProperty("total_bytes").GetInt64() > 4 * 6_738_415_616L);
        Assert.Contains("105,635,840", stderr);   // the human report went to stderr
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void CliCountsLoraWithoutExperts()
    {
        var (code, stdout, stderr) = RunCli("params", "--base-model", TestUtil.Fixture("llama-tiny"), "--adapter-kind", "lora",
            "--rank", "4", "--targets", "q_proj,down_proj", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout.TrimEnd().Split('\n')[^1]);
        Assert.Equal(3 * 4 * ((64 + 64) + (160 + 64)), doc.RootElement.GetProperty("total").GetInt64());
        Assert.Equal(0, doc.RootElement.GetProperty("router").GetInt64());
    }

    [Trait("Category", "Slow")]
    [Theory]
    [InlineData("--experts", "2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2")]    // 33 values on 32 layers
    [InlineData("--experts", "2,0,4,8")]
    [InlineData("--top-k", "4")]          // top-k 4 > 2 experts in the first layers
    public void CliRejectsABadSpecWithOneErrorLine(string option, string value)
    {
        var args = new List<string> { "params", "--base-model", Llama2Dir(), "--experts", "2468", "--json" };
        int at = args.IndexOf(option);
        if (at >= 0) args[at + 1] = value; else args.AddRange([option, value]);
        var (code, stdout, stderr) = RunCli([.. args]);
        Assert.NotEqual(0, code);
        Assert.Equal("", stdout);
        var lines = stderr.TrimEnd().Split('\n');
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void CliNeedsExpertsForMola()
    {
        var (code, _, stderr) = RunCli("params", "--base-model", Llama2Dir());
        Assert.Equal(1, code);
        Assert.StartsWith("error: --experts is required", stderr);
    }

    static (int Code, string Stdout, string Stderr) RunCli(params string[] args)
    {
        var r = CliRunner.Run(args);
        return (r.ExitCode, r.Stdout, r.Stderr);
    }
}
