using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Models;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>PEFT LoRA adapters as PEFT writes them (Fixtures/peft/make_peft_fixtures.py): rsLoRA, a per-layer
/// rank_pattern, a per-module alpha_pattern, weights as safetensors or a torch .bin. Compared with the float64
/// reference's logits of the base model with PEFT's delta merged (W + scaling B A), and with the same adapter
/// written in mola's own format.</summary>
public class PeftAdapterTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");
    static string Peft(string name) => TestUtil.Fixture("peft", name);

    [Theory]
    [InlineData("lora-safetensors", false)]
    [InlineData("lora-safetensors", true)]
    [InlineData("lora-bin", false)]
    [InlineData("lora-bin", true)]
    [InlineData("ours", true)]
    public void PeftAdapterGivesTheReferenceLogits(string dir, bool merged)
    {
        var f = TestUtil.ReadAll(Peft("expected.safetensors"));
        using var model = ModelLoader.Load(Llama);
        var adapter = merged ? AdapterModel.LoadForInference(model, Peft(dir)) : AdapterModel.Load(model, Peft(dir));
        adapter.eval();
        Assert.Equal(new[] { 4, 2, 6 }, adapter.Config.Rank);   // r 4, rank_pattern layers.1 -> 2, layer 2's modules -> 6
        using var _ = no_grad();
        using var output = adapter.Forward(f["input_ids"]);
        double diff = TestUtil.MaxAbsDiff(output.Logits, f["logits"]);
        Assert.True(diff < 1e-4, $"max |logits - reference| {diff:E2}");
    }

    [Fact]
    public void PeftAdapterLoadsAsOurAdapterOfTheSameWeights()
    {
        using var model = ModelLoader.Load(Llama);
        var peft = AdapterModel.Load(model, Peft("lora-bin"));
        var got = peft.NamedTensors().ToDictionary(t => t.Name, t => t.Tensor.detach().clone());
        peft.DetachFromBase();
        var ours = TestUtil.ReadAll(TestUtil.Fixture("peft", "ours", "adapter_model.safetensors"));
        Assert.Equal(ours.Keys.Order(), got.Keys.Order());
        foreach (var (name, want) in ours)
            Assert.True(TestUtil.MaxAbsDiff(got[name], want) <= 1e-6 * want.abs().max().item<float>(), name);
        Assert.Equal(8, peft.Config.LoraAlpha);
    }

    [Fact]
    public void EvalScoresThePeftAdapterAsOurs()
    {
        string data = Path.Combine(TestUtil.ExamplesDir(), "scienceqa.json");
        string[] Eval(string adapter, string output) => ["eval", "--base-model", Llama, "--adapter", adapter, "--data", data,
            "--task", "scienceqa", "--scoring", "likelihood", "--output", output, "--json"];
        string dir = TestUtil.TempDir();
        var peft = CliRunner.Run(Eval(Peft("lora-safetensors"), Path.Combine(dir, "peft.jsonl")), TimeSpan.FromSeconds(120));
        var ours = CliRunner.Run(Eval(Peft("ours"), Path.Combine(dir, "ours.jsonl")), TimeSpan.FromSeconds(120));
        Assert.True(peft.ExitCode == 0, peft.ToString());
        Assert.True(ours.ExitCode == 0, ours.ToString());
        Assert.Equal(8, peft.LastJson().GetProperty("n").GetInt32());
        Assert.Equal(ours.LastJson().GetProperty("accuracy").GetDouble(), peft.LastJson().GetProperty("accuracy").GetDouble());
        static List<string?> Predicted(string path) => File.ReadAllLines(path).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("predicted").GetString()).ToList();
        Assert.Equal(Predicted(Path.Combine(dir, "ours.jsonl")), Predicted(Path.Combine(dir, "peft.jsonl")));
    }

    [Theory]
    [InlineData("lora-bin")]
    [InlineData("lora-safetensors")]
    public void ConvertAdapterWritesOurFormat(string dir)
    {
        string to = Path.Combine(TestUtil.TempDir(), "converted");
        var r = CliRunner.Run("convert-adapter", "--adapter", Peft(dir), "--output", to, "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("[4,2,6]", r.LastJson().GetProperty("r").GetRawText());
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(to, AdapterFile.ConfigFile)))!.AsObject();
        Assert.Equal("[4,2,6]", config["r"]!.ToJsonString());
        Assert.Null(config["use_rslora"]);
        // The tensors the generator folded in float64, as mola's own adapter of the same weights.
        var got = TestUtil.ReadAll(Path.Combine(to, AdapterFile.WeightsFile));
        var ours = TestUtil.ReadAll(TestUtil.Fixture("peft", "ours", "adapter_model.safetensors"));
        Assert.Equal(ours.Keys.Order(), got.Keys.Order());
        foreach (var (name, want) in ours)
            Assert.True(TestUtil.MaxAbsDiff(got[name], want) <= 1e-6 * want.abs().max().item<float>(), name);

        var f = TestUtil.ReadAll(Peft("expected.safetensors"));
        using var model = ModelLoader.Load(Llama);
        var adapter = AdapterModel.LoadForInference(model, to);
        using (no_grad())
        using (var output = adapter.Forward(f["input_ids"]))
            Assert.True(TestUtil.MaxAbsDiff(output.Logits, f["logits"]) < 1e-4);

        Assert.Contains("already holds an adapter", CliRunner.Run("convert-adapter", "--adapter", Peft(dir), "--output", to).SingleErrorLine());
        Assert.Contains("rank_pattern gives layer 0 q_proj r 8 but v_proj r 4", CliRunner.Run("convert-adapter", "--adapter",
            WithKey("rank_pattern", JsonNode.Parse("{\"q_proj\": 8}")), "--output", Path.Combine(TestUtil.TempDir(), "x")).SingleErrorLine());
    }

    /// <summary>Fixtures/original-mola: llama-tiny-mola's adapter as GCYZSL/MoLA's patched PEFT 0.4 saves it
    /// (make_original_mola_fixture.py); the reference's logits are llama-tiny-mola's.</summary>
    [Fact]
    public void OriginalMolaAdapterConvertsWithTopKAndGivesTheReferenceLogits()
    {
        string original = TestUtil.Fixture("original-mola", "adapter");
        string to = Path.Combine(TestUtil.TempDir(), "converted");
        var r = CliRunner.Run("convert-adapter", "--adapter", original, "--output", to, "--top-k", "1,2,2", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(to, AdapterFile.ConfigFile)))!.AsObject();
        Assert.Equal("MOLA", config["peft_type"]!.GetValue<string>());
        Assert.Equal("[2,4,8]", config["num_experts"]!.ToJsonString());   // counted from the tensors
        Assert.Equal("[1,2,2]", config["top_k"]!.ToJsonString());
        var got = TestUtil.ReadAll(Path.Combine(to, AdapterFile.WeightsFile));
        var want = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "adapter_model.safetensors"));
        Assert.Equal(want.Keys.Order(), got.Keys.Order());
        Assert.All(want, kv => Assert.True(TestUtil.BitEqual(got[kv.Key], kv.Value), kv.Key));

        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "expected.safetensors"));
        using var model = ModelLoader.Load(Llama);
        var adapter = AdapterModel.LoadForInference(model, to);
        using (no_grad())
        using (var output = adapter.Forward(f["input_ids"]))
            Assert.True(TestUtil.MaxAbsDiff(output.Logits, f["logits"]) < 1e-4);
        adapter.DetachFromBase();

        var e = Assert.Throws<MolaException>(() => AdapterModel.Load(model, original));
        Assert.Contains("an adapter saved by the original MoLA code (experts named lora_A_<e>), which records no top_k", e.Message);
        Assert.Contains("--top-k is for adapters saved by the original MoLA code", CliRunner.Run("convert-adapter", "--adapter", Peft("lora-bin"),
            "--output", Path.Combine(TestUtil.TempDir(), "x"), "--top-k", "2").SingleErrorLine());
        Assert.Contains("top_k of layer 0 is 3 but that layer has 2 experts", CliRunner.Run("convert-adapter", "--adapter", original,
            "--output", Path.Combine(TestUtil.TempDir(), "y"), "--top-k", "3").SingleErrorLine());
    }

    /// <summary>A copy of the PEFT fixture with one config key set (null value: removed).</summary>
    static string WithKey(string key, JsonNode? value)
    {
        string dir = TestUtil.CopyFixture(Path.Combine("peft", "lora-safetensors"));
        string path = Path.Combine(dir, AdapterFile.ConfigFile);
        var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        o[key] = value;
        File.WriteAllText(path, o.ToJsonString());
        return dir;
    }

    public static TheoryData<string, string, string> Refused() => new()
    {
        { "target_modules", "\".*(q|v)_proj\"", "target_modules is the regular expression \".*(q|v)_proj\", which mola does not match; list the module names" },
        { "use_dora", "true", "\"use_dora\" is true, but mola reads LoRA adapters without DoRA's magnitude vectors" },
        { "modules_to_save", "[\"lm_head\"]", "\"modules_to_save\" is [\"lm_head\"], but mola reads LoRA adapters without fully trained copies" },
        { "bias", "\"lora_only\"", "\"bias\" is \"lora_only\", but mola reads adapters that train no biases (expected \"none\")" },
        { "use_mystery", "true", "unknown key \"use_mystery\" (not a PEFT LoRA key mola knows" },
        { "rank_pattern", "{\"q_proj\": 8}", "rank_pattern gives layer 0 q_proj r 8 but v_proj r 4; a mola adapter has one rank per layer" },
        { "layers_to_transform", "[0, 2]", "layers_to_transform leaves layer 1 without LoRA" },
        { "alpha_pattern", "{\"(\": 8}", "alpha_pattern key \"(\" is not a valid regular expression" },
    };

    [Theory]
    [MemberData(nameof(Refused))]
    public void KeysThatChangeTheMathAreRefusedByName(string key, string json, string message)
    {
        string dir = WithKey(key, JsonNode.Parse(json));
        using var model = ModelLoader.Load(Llama);
        var e = Assert.Throws<MolaException>(() => AdapterModel.Load(model, dir));
        Assert.Contains(Path.Combine(dir, AdapterFile.ConfigFile), e.Message);
        Assert.Contains(message, e.Message);
        Assert.All(model.model.layers, l => Assert.Null(l.self_attn.q_proj.Adapter));   // nothing left attached
    }

    [Fact]
    public void KeysThatDoNotChangeTheMathAreAccepted()
    {
        // fan_in_fan_out true is what a GPT-2 config says; on nn.Linear modules PEFT itself ignores it.
        string dir = WithKey("fan_in_fan_out", true);
        using var model = ModelLoader.Load(Llama);
        var f = TestUtil.ReadAll(Peft("expected.safetensors"));
        var adapter = AdapterModel.LoadForInference(model, dir);
        using var _ = no_grad();
        using var output = adapter.Forward(f["input_ids"]);
        Assert.True(TestUtil.MaxAbsDiff(output.Logits, f["logits"]) < 1e-4);
    }
}
