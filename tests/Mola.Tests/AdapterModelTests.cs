using Mola.Adapters;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class AdapterModelTests
{
    internal static Tensor GradOf(AdapterModel adapter, string name)
    {
        foreach (var (l, m, _, module) in adapter.Modules)
        {
            string p = AdapterFile.Prefix(l, m);
            if (module is MolaLayer mola)
            {
                if (name == $"{p}.router.weight") return mola.router.grad!;
                for (int e = 0; e < mola.NumExperts; e++)
                {
                    if (name == $"{p}.lora_A.{e}.weight") return mola.lora_A.grad!.narrow(0, e * mola.Rank, mola.Rank);
                    if (name == $"{p}.lora_B.{e}.weight") return mola.lora_B.grad!.narrow(1, e * mola.Rank, mola.Rank);
                }
            }
        }
        throw new KeyNotFoundException(name);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void FixtureAdapterMatchesReferenceLogitsLossesAndGradients(bool loop)
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var adapter = AdapterModel.Load(model, TestUtil.Fixture("llama-tiny-mola"));
        adapter.UseLoopPath(loop);
        Assert.Equal(new[] { 2, 4, 8 }, adapter.Config.NumExperts);
        using var output = adapter.Forward(f["input_ids"], labels: f["labels"]);
        Assert.True(TestUtil.MaxAbsDiff(output.Logits, f["logits"]) < 1e-4);
        Assert.True(TestUtil.RelDiff(output.CeLoss!, f["ce_loss"]) < 1e-5);
        Assert.True(TestUtil.RelDiff(output.AuxLoss!, f["aux_loss"]) < 1e-5);
        Assert.True(TestUtil.RelDiff(output.Loss!, f["total_loss"]) < 1e-5);
        output.Loss!.backward();
        int checkedGrads = 0;
        foreach (var (key, want) in f.Where(kv => kv.Key.StartsWith("grad.")))
        {
            var got = GradOf(adapter, key["grad.".Length..]);
            Assert.True(TestUtil.MaxAbsDiff(got, want) < 1e-4, $"{key}: max |diff| {TestUtil.MaxAbsDiff(got, want):E2}");
            checkedGrads++;
        }
        Assert.Equal(3 * 7 * (1 + 0) + 7 * 2 * (2 + 4 + 8), checkedGrads); // routers + A and B of every expert
        Assert.All(model.parameters(), p => Assert.Null(p.grad));
    }

    [Fact]
    public void FreshAdapterLeavesLogitsUnchangedAndAStepMovesOnlyTheAdapter()
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny", "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var before = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());
        torch.manual_seed(3);
        var cfg = new AdapterConfig
        {
            Kind = AdapterKind.Mola,
            TargetModules = [.. TargetModules.All],
            Rank = [4, 4, 8],
            NumExperts = [2, 4, 6],
            TopK = [1, 2, 2],
            LoraAlpha = 16,
            LoraDropout = 0.05,
            AuxLossCoef = 0.001,
        };
        var adapter = AdapterModel.Attach(model, cfg);
        adapter.eval();
        using (torch.no_grad())
        using (var o = adapter.Forward(f["input_ids"]))
            Assert.True(TestUtil.MaxAbsDiff(o.Logits, f["logits"]) < 1e-4);

        adapter.train();
        var trainable = adapter.parameters().ToList();
        Assert.Equal(3 * 7 * 3, trainable.Count); // router, A, B per module
        var adapterBefore = trainable.Select(p => p.detach().clone()).ToList();
        var opt = torch.optim.AdamW(trainable, lr: 1e-2);
        using (var o = adapter.Forward(f["input_ids"], labels: f["input_ids"]))
            o.Loss!.backward();
        opt.step();
        foreach (var (name, p) in model.named_parameters())
            Assert.True(TestUtil.BitEqual(p, before[name]), $"base parameter {name} changed");
        Assert.Contains(trainable.Zip(adapterBefore), pair => !TestUtil.BitEqual(pair.First, pair.Second));
        Assert.All(trainable.Where(p => p.shape.Length == 2), p => Assert.True(p.requires_grad));
    }

    [Fact]
    public void SaveLoadRoundTripIsBitExact()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var adapter = AdapterModel.Load(model, TestUtil.Fixture("llama-tiny-mola"));
        string dir = TestUtil.TempDir();
        adapter.Save(dir);
        var original = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "adapter_model.safetensors"));
        var saved = TestUtil.ReadAll(Path.Combine(dir, "adapter_model.safetensors"));
        Assert.Equal(original.Keys.OrderBy(k => k), saved.Keys.OrderBy(k => k));
        foreach (var (k, t) in original) Assert.True(TestUtil.BitEqual(t, saved[k]), k);
        var cfg = AdapterConfig.Load(dir);
        Assert.Equal(adapter.Config.NumExperts, cfg.NumExperts);
        Assert.Equal(adapter.Config.TopK, cfg.TopK);
        Assert.Equal(adapter.Config.Rank, cfg.Rank);
        Assert.Equal(adapter.Config.LoraAlpha, cfg.LoraAlpha);

        adapter.DetachFromBase();
        var again = AdapterModel.Load(model, dir);
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "expected.safetensors"));
        using var _ = torch.no_grad();
        using var o = again.Forward(f["input_ids"]);
        Assert.True(TestUtil.MaxAbsDiff(o.Logits, f["logits"]) < 1e-4);
    }

    [Fact]
    public void AdapterThatDoesNotFitTheModelIsRefusedClearly()
    {
        using var gemma = ModelLoader.Load(TestUtil.Fixture("gemma-tiny"));   // 2 layers, not 3
        var e = Assert.Throws<MolaException>(() => AdapterModel.Load(gemma, TestUtil.Fixture("llama-tiny-mola")));
        Assert.Contains("3 layers but the base model has 2", e.Message);
        Assert.Null(gemma.model.layers[0].self_attn.q_proj.Adapter);

        using var mistral = ModelLoader.Load(TestUtil.Fixture("mistral-tiny"));   // k_proj is 32 wide (2 KV heads), not 64
        var e2 = Assert.Throws<MolaException>(() => AdapterModel.Load(mistral, TestUtil.Fixture("llama-tiny-mola")));
        Assert.Contains("k_proj.lora_B.0.weight\" has shape [64, 4]", e2.Message);
        Assert.Null(mistral.model.layers[0].self_attn.k_proj.Adapter);

        string dir = TestUtil.CopyFixture("llama-tiny-mola");
        var t = TestUtil.ReadAll(Path.Combine(dir, "adapter_model.safetensors"));
        t.Remove("base_model.model.model.layers.2.mlp.down_proj.lora_A.7.weight");
        SafeTensorsFile.Save(Path.Combine(dir, "adapter_model.safetensors"), t);
        using var llama = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var e3 = Assert.Throws<MolaException>(() => AdapterModel.Load(llama, dir));
        Assert.Contains("layers.2.mlp.down_proj.lora_A.7.weight\" missing", e3.Message);
    }

    [Trait("Category", "Slow")]
    [Theory]
    [InlineData("peft_type", "5", "key \"peft_type\": expected a string, got 5")]
    [InlineData("base_model_name_or_path", "5", "key \"base_model_name_or_path\": expected a string, got 5")]
    [InlineData("target_modules", "[1, 2]", "key \"target_modules\": expected a list of module names, got 1")]
    [InlineData("r", "[4, 4, 1e12]", "key \"r\": expected an integer, got 1e12")]
    [InlineData("num_experts", "[2, null, 8]", "key \"num_experts\": expected an integer, got null")]
    // Finding 4: a duplicate key (the last one silently won), a lone surrogate (an unnamed InvalidOperationException).
    [InlineData("r", "[8, 8, 8],\n \"r\": [2, 2, 2]", "duplicate key \"r\"")]
    [InlineData("base_model_name_or_path", "\"\\udc00\"", "key \"base_model_name_or_path\": a string is not valid text")]
    [InlineData("lora_alpha", "1e999", "key \"lora_alpha\": expected a finite number, got 1e999")]
    public void DamagedAdapterConfigValuesAreNamed(string key, string raw, string message)
    {
        // The value goes in as raw text: JSON a JsonNode cannot hold (a repeated key, a bad escape) included.
        string dir = TestUtil.CopyFixture("llama-tiny-mola");
        string path = Path.Combine(dir, "adapter_config.json");
        var o = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!;
        o[key] = "PLACEHOLDER";
        File.WriteAllText(path, o.ToJsonString().Replace("\"PLACEHOLDER\"", raw));
        var e = Assert.Throws<MolaException>(() => AdapterConfig.Load(dir));
        Assert.StartsWith(path, e.Message);
        Assert.Contains(message, e.Message);
        var run = CliRunner.Run("generate", "--base-model", TestUtil.Fixture("llama-tiny"), "--adapter", dir, "--prompt", "a");
        Assert.Equal(e.Message, run.SingleErrorLine());
    }

    [Theory]
    [InlineData("r", "tensor \"base_model.model.model.layers.2.self_attn.q_proj.lora_A.0.weight\" has shape [8, 64], but", "says r 200000 for layer 2")]
    [InlineData("num_experts", "tensor \"base_model.model.model.layers.2.self_attn.q_proj.lora_A.19999.weight\" missing, but", "says num_experts 20000 for layer 2")]
    public void AConfigThatOverstatesItsWeightsIsRefusedBeforeBuilding(string key, string start, string end)
    {
        // Either typo would first allocate gigabytes of adapter parameters if it were checked only when loading them.
        string dir = TestUtil.CopyFixture("llama-tiny-mola");
        string path = Path.Combine(dir, "adapter_config.json");
        var o = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!;
        var values = o[key]!.AsArray();
        values[2] = key == "r" ? 200000 : 20000;
        File.WriteAllText(path, o.ToJsonString());
        using var llama = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var e = Assert.Throws<MolaException>(() => AdapterModel.Load(llama, dir));
        Assert.Contains(start, e.Message);
        Assert.EndsWith(end, e.Message);
        Assert.Null(llama.model.layers[0].self_attn.q_proj.Adapter);
    }

    [Theory]
    [InlineData("nan")]
    [InlineData("int")]
    public void DamagedAdapterWeightsAreRefused(string damage)
    {
        const string name = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.1.weight";
        string dir = TestUtil.CopyFixture("llama-tiny-mola");
        string file = Path.Combine(dir, "adapter_model.safetensors");
        var t = TestUtil.ReadAll(file);
        if (damage == "nan") t[name][0, 0] = float.NaN;
        else t[name] = t[name].to(ScalarType.Int32);
        SafeTensorsFile.Save(file, t);
        using var llama = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var e = Assert.Throws<MolaException>(() => AdapterModel.Load(llama, dir));
        Assert.Contains($"tensor \"{name}\"", e.Message);
        Assert.Contains(damage == "nan" ? "holds NaN or infinite values" : "is stored as I32", e.Message);
    }

    [Fact]
    public void LoraMergeGivesTheSameLogitsAsTheUnmergedAdapter()
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny", "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var w0 = model.model.layers[1].mlp.up_proj.weight.detach().clone();
        torch.manual_seed(5);
        var cfg = new AdapterConfig { Kind = AdapterKind.Lora, TargetModules = ["q_proj", "v_proj", "up_proj"], Rank = [8, 8, 8], LoraAlpha = 16, LoraDropout = 0 };
        var adapter = AdapterModel.Attach(model, cfg);
        using (torch.no_grad())
            foreach (var p in adapter.parameters().Where(p => p.shape[1] == 8)) p.copy_(torch.randn(p.shape) * 0.1);
        using var _ = torch.no_grad();
        var unmerged = adapter.Forward(f["input_ids"]).Logits;
        Assert.True(TestUtil.MaxAbsDiff(unmerged, f["logits"]) > 1e-3); // the adapter does something
        adapter.Merge();
        Assert.False(TestUtil.BitEqual(model.model.layers[1].mlp.up_proj.weight, w0));
        var merged = adapter.Forward(f["input_ids"]).Logits;
        Assert.True(TestUtil.MaxAbsDiff(merged, unmerged) < 1e-4);
        adapter.Unmerge();
        Assert.True(TestUtil.MaxAbsDiff(model.model.layers[1].mlp.up_proj.weight, w0) < 1e-6);

        string dir = TestUtil.TempDir();
        adapter.Save(dir);
        var names = TestUtil.ReadAll(Path.Combine(dir, "adapter_model.safetensors")).Keys.ToList();
        Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", names);
        Assert.Contains("base_model.model.model.layers.2.mlp.up_proj.lora_B.weight", names);
        Assert.Equal(3 * 3 * 2, names.Count);
    }

    [Fact]
    public void AuxLossIgnoresPaddingButMatchesWithout()
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var adapter = AdapterModel.Load(model, TestUtil.Fixture("llama-tiny-mola"));
        using var _ = torch.no_grad();
        var ids = f["input_ids"];
        var labels = f["labels"];
        var pads = torch.zeros(2, 3, ScalarType.Int64);
        var ignore = torch.full(2, 3, -100L, ScalarType.Int64);
        var mask = torch.cat([torch.ones(2, 12, ScalarType.Int64), pads], 1);
        using var padded = adapter.Forward(torch.cat([ids, pads], 1), mask, torch.cat([labels, ignore], 1));
        Assert.True(TestUtil.RelDiff(padded.AuxLoss!, f["aux_loss"]) < 1e-5);
        Assert.True(TestUtil.RelDiff(padded.CeLoss!, f["ce_loss"]) < 1e-5);
    }
}
