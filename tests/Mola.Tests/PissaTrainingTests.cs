using System.Diagnostics;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Data;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary><c>mola train --init pissa</c> end to end: the recipe decomposes the base, the adapter directory and every
/// checkpoint store the initial factors, and every loader rebuilds the residual from the unchanged base checkpoint.</summary>
[Trait("Category", "Slow")]
public class PissaTrainingTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");
    static readonly string Data = TestUtil.Fixture("train", "small.jsonl");

    /// <summary>Eight training records, tokenised as the run does (cutoff 96), in one padded batch.</summary>
    static Batch TrainingBatch()
    {
        var config = ModelConfig.Load(Llama);
        var tok = MolaTokenizer.Load(Llama, config.BosTokenId, config.EosTokenId, config.VocabSize);
        var records = InstructionRecord.Load(Data).Take(8).ToList();
        return InstructionDataset.Create(records, PromptTemplate.Alpaca, tok, new TokenizeOptions(96)).Collate(Enumerable.Range(0, 8).ToList(), CPU);
    }

    static (Tensor Logits, double Ce) Run(AdapterModel adapter, Batch b)
    {
        using var _ = no_grad();
        using var o = adapter.Forward(b.InputIds, b.AttentionMask, b.Labels);
        return (o.Logits.detach().clone(), o.CeLoss!.item<float>());
    }

    /// <summary>The recipe the CLI runs, with --init pissa: at step 0 the model's logits are the unadapted base model's
    /// (a separate load of the llama-tiny fixture, float32); eight steps lower the loss on training records; the saved
    /// adapter, loaded onto a fresh copy of the unchanged checkpoint by generate's loader, gives the trained model's logits.</summary>
    [Fact]
    public void InitialLogitsAreTheBaseModels_TrainingLowersTheLoss_AndTheSavedAdapterReloads()
    {
        using var batch = TrainingBatch();
        Tensor reference;
        using (var plain = ModelLoader.Load(Llama))
        using (no_grad())
            reference = plain.Forward(batch.InputIds, batch.AttentionMask).detach().clone();

        string dir = TestUtil.TempDir();
        var run = new RunDescription
        {
            BaseModel = Llama,
            Data = Data,
            Output = dir,
            Training = new TrainingOptions { MaxSteps = 8, BatchSize = 4, MicroBatchSize = 2, LearningRate = 3e-3, WarmupSteps = 2, SaveSteps = 0, Seed = 11 },
            Tokenize = new TokenizeOptions(96),
            Adapter = AdapterSpec.Paper with { Experts = "2,4,8", TopK = "1,2,2", Rank = "4", Dropout = 0, Init = "pissa" },
        };
        (Tensor Logits, double Ce)? before = null, after = null;
        new TrainingRecipe(run)
        {
            BeforeTraining = m => before = Run(m.Adapter, batch),
            AfterTraining = m => after = Run(m.Adapter, batch),
        }.Execute();
        Assert.True(before is not null && after is not null, "the recipe did not call back");

        double rel = TestUtil.RelDiff(before.Value.Logits, reference);
        Assert.True(rel <= 1e-5, $"initial logits differ from the base model's by {rel} (relative)");
        Assert.True(double.IsFinite(after.Value.Ce) && after.Value.Ce < before.Value.Ce - 0.01, $"loss {before.Value.Ce} before, {after.Value.Ce} after 8 steps");

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, AdapterFile.ConfigFile)))!;
        Assert.Equal("pissa", (string?)config["init"]);
        Assert.Equal("pissa", (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(dir, Checkpoints.RunRecordFile)))!["init"]);
        // 3 layers x 7 modules, A and B each
        Assert.Equal(42, TestUtil.ReadAll(Path.Combine(dir, AdapterFile.PissaFile)).Count);

        using var fresh = ModelLoader.Load(Llama);
        var loaded = AdapterModel.LoadForInference(fresh, dir);
        var reloaded = Run(loaded, batch);
        double diff = TestUtil.MaxAbsDiff(reloaded.Logits, after.Value.Logits);
        Assert.True(diff <= 1e-6, $"reloaded logits differ from the trained model's by {diff}");
        // Without the residual the same experts give another model: the rebuild is what makes them equal.
        using var bare = ModelLoader.Load(Llama);
        var unrebuilt = AdapterModel.Attach(bare, loaded.Config with { Pissa = false });
        unrebuilt.LoadWeights(Path.Combine(dir, AdapterFile.WeightsFile));
        Assert.True(TestUtil.MaxAbsDiff(Run(unrebuilt, batch).Logits, after.Value.Logits) > 1e-3);
    }

    /// <summary>Through the CLI: a PiSSA run whose one step cannot move the weights (learning rate 1e-30) leaves the
    /// model as it was, so perplexity with the adapter (its loader rebuilding the residual) is the base model's own,
    /// whether the factors came from the randomized SVD (the default) or the exact one; the config records which.</summary>
    [Theory]
    [InlineData(null, 4)]
    [InlineData("full", 0)]
    [InlineData("1", 1)]
    public void ThroughTheCli_AnUntrainedPissaAdapterScoresAsTheBaseModel(string? iterations, int recorded)
    {
        string dir = TestUtil.TempDir();
        string[] extra = iterations is null ? [] : ["--pissa-iterations", iterations];
        var train = CliRunner.Run(TrainCliTests.Args(dir, ["--init", "pissa", "--max-steps", "1", "--learning-rate", "1e-30", "--warmup-steps", "0", "--save-steps", "0", .. extra]),
            TimeSpan.FromMinutes(2));
        Assert.True(train.ExitCode == 0, train.ToString());
        Assert.Equal(recorded, AdapterConfig.Load(dir).PissaIterations);
        Assert.Equal(recorded, JsonNode.Parse(File.ReadAllText(Path.Combine(dir, AdapterFile.ConfigFile)))!["pissa_iterations"]!.GetValue<int>());
        string texts = Path.Combine(dir, "texts.jsonl");
        File.WriteAllLines(texts, InstructionRecord.Load(Data).Take(6).Select(r => System.Text.Json.JsonSerializer.Serialize(new { text = PromptTemplate.Alpaca.Full(r) })));
        var adapted = CliRunner.Run("perplexity", "--base-model", Llama, "--adapter", dir, "--data", texts, "--json");
        var plain = CliRunner.Run("perplexity", "--base-model", Llama, "--data", texts, "--json");
        Assert.True(adapted.ExitCode == 0, adapted.ToString());
        Assert.True(plain.ExitCode == 0, plain.ToString());
        double a = adapted.LastJson().GetProperty("nll").GetDouble(), b = plain.LastJson().GetProperty("nll").GetDouble();
        Assert.True(Math.Abs(a - b) <= 1e-5 * Math.Abs(b), $"nll {a} with the adapter, {b} without");
    }

    /// <summary>A PiSSA run killed after a checkpoint and resumed has the loss curve and the adapter of an uninterrupted
    /// one (the residual rebuilt from the checkpoint's factors), and the same stored factors.</summary>
    [Fact]
    public void KilledAndResumedPissaRunEqualsAnUninterruptedOne()
    {
        string whole = TestUtil.TempDir(), broken = TestUtil.TempDir();
        string[] run = ["--init", "pissa", "--max-steps", "12", "--save-steps", "4", "--dropout", "0.1"];
        var full = CliRunner.Run(TrainCliTests.Args(whole, run), TimeSpan.FromMinutes(4));
        Assert.True(full.ExitCode == 0, full.ToString());

        using (var p = CliRunner.Start(TrainCliTests.Args(broken, run)))
        {
            var clock = Stopwatch.StartNew();
            while (!Directory.Exists(Path.Combine(broken, "checkpoint-4")) && !p.HasExited && clock.Elapsed < TimeSpan.FromMinutes(3))
                Thread.Sleep(20);
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
        }
        Assert.True(File.Exists(Path.Combine(broken, "checkpoint-4", AdapterFile.PissaFile)));
        Assert.False(File.Exists(Path.Combine(broken, AdapterFile.WeightsFile)), "the run finished before it was killed");

        var resumed = CliRunner.Run(TrainCliTests.Args(broken, [.. run, "--resume", "latest"]), TimeSpan.FromMinutes(4));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        TrainCliTests.AssertSameRun(whole, broken, 12);
        var fa = TestUtil.ReadAll(Path.Combine(whole, AdapterFile.PissaFile));
        var fb = TestUtil.ReadAll(Path.Combine(broken, AdapterFile.PissaFile));
        Assert.Equal(fa.Keys.Order(), fb.Keys.Order());
        Assert.All(fa, kv => Assert.True(TestUtil.BitEqual(kv.Value, fb[kv.Key]), kv.Key));
    }

    /// <summary>A PiSSA adapter without its factors, or with factors that do not fit, is one clear error naming the
    /// file, in generate, and for a resume; serve refuses PiSSA adapters (the base it shares would change).</summary>
    [Fact]
    public void MissingOrMismatchedFactorsAreRefused_AndServeRefusesPissa()
    {
        string dir = TestUtil.TempDir();
        var train = CliRunner.Run(TrainCliTests.Args(dir, "--init", "pissa", "--max-steps", "2", "--save-steps", "1"), TimeSpan.FromMinutes(2));
        Assert.True(train.ExitCode == 0, train.ToString());

        // The base as a serve would share it: refused before anything changes.
        using (var model = ModelLoader.Load(Llama))
        {
            var e = Assert.Throws<MolaException>(() => new AdapterSet(model, [("p", dir)]));
            Assert.Contains("PiSSA", e.Message);
        }

        // Pruning keeps the initial factors: the pruned adapter loads onto the unchanged base with the same residual.
        string pruned = Path.Combine(TestUtil.TempDir(), "pruned");
        ExpertPruning.Prune(dir, pruned, keepExperts: 7, maxRedundancy: null);
        using (var a = ModelLoader.Load(Llama))
        using (var b = ModelLoader.Load(Llama))
        {
            AdapterModel.LoadForInference(a, dir);
            var p = AdapterModel.LoadForInference(b, pruned);
            Assert.Equal(7, p.Config.NumExperts.Sum());
            static Tensor Q(CausalLM m) => m.named_parameters().Single(x => x.name == "model.layers.2.mlp.down_proj.weight").parameter;
            Assert.True(TestUtil.BitEqual(Q(a), Q(b)));
        }

        // A factors file of another adapter (rank 2 instead of 4): the shapes do not fit.
        string other = TestUtil.TempDir();
        Assert.Equal(0, CliRunner.Run(TrainCliTests.Args(other, "--init", "pissa", "--max-steps", "1", "--save-steps", "0", "--rank", "2"), TimeSpan.FromMinutes(2)).ExitCode);
        string mismatched = TestUtil.TempDir();
        foreach (var f in Directory.GetFiles(dir)) File.Copy(f, Path.Combine(mismatched, Path.GetFileName(f)));
        File.Copy(Path.Combine(other, AdapterFile.PissaFile), Path.Combine(mismatched, AdapterFile.PissaFile), overwrite: true);
        string msg = CliRunner.Run("generate", "--base-model", Llama, "--adapter", mismatched, "--instruction", "Name a rock.", "--max-new-tokens", "2").SingleErrorLine();
        Assert.Contains(AdapterFile.PissaFile, msg);
        Assert.Contains("do not fit", msg);

        File.Delete(Path.Combine(dir, AdapterFile.PissaFile));
        msg = CliRunner.Run("generate", "--base-model", Llama, "--adapter", dir, "--instruction", "Name a rock.", "--max-new-tokens", "2").SingleErrorLine();
        Assert.Contains($"{AdapterFile.PissaFile}: not found", msg);

        File.Delete(Path.Combine(dir, "checkpoint-1", AdapterFile.PissaFile));
        var resume = CliRunner.Run(TrainCliTests.Args(dir, "--init", "pissa", "--max-steps", "2", "--save-steps", "1", "--resume", Path.Combine(dir, "checkpoint-1")), TimeSpan.FromMinutes(1));
        Assert.Contains($"{AdapterFile.PissaFile}: not found", resume.LastErrorLine());
    }

    [Theory]
    [InlineData(new[] { "--init", "pissa", "--adapter-kind", "lora", "--experts", "1", "--top-k", "1" }, "--init pissa applies to --adapter-kind mola")]
    [InlineData(new[] { "--init", "svd" }, "'svd' not recognized")]
    [InlineData(new[] { "--pissa-iterations", "2" }, "--pissa-iterations applies to --init pissa")]
    [InlineData(new[] { "--init", "pissa", "--pissa-iterations", "many" }, "--pissa-iterations must be a number of subspace iterations (0 or more) or full, got \"many\"")]
    public void BadInitOptionsAreOneError(string[] extra, string message)
    {
        string dir = TestUtil.TempDir();
        var r = CliRunner.Run(TrainCliTests.Args(dir, extra), TimeSpan.FromMinutes(1));
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains(message, r.Stderr);
        Assert.False(File.Exists(Path.Combine(dir, AdapterFile.WeightsFile)));
    }

    [Fact]
    public void InitWithAnInitialAdapterIsRefused()
    {
        string dir = TestUtil.TempDir();
        var r = CliRunner.Run("train", "--base-model", Llama, "--data", Data, "--output", dir, "--init", "pissa", "--init-adapter", dir);
        Assert.StartsWith("--init cannot be combined with --init-adapter", r.SingleErrorLine());
    }

    [Fact]
    public void AnUnknownInitInTheConfigIsNamed()
    {
        string dir = TestUtil.TempDir();
        var cfg = (AdapterSpec.Paper with { Experts = "2", TopK = "1", Rank = "4" }).Build(3, Llama);
        cfg.Save(dir);
        var o = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, AdapterFile.ConfigFile)))!.AsObject();
        Assert.False(o.ContainsKey("init"));   // PEFT's layout unchanged for the default
        o["init"] = "olora";
        File.WriteAllText(Path.Combine(dir, AdapterFile.ConfigFile), o.ToJsonString());
        var e = Assert.Throws<MolaException>(() => AdapterConfig.Load(dir));
        Assert.Contains("init \"olora\" is not supported", e.Message);
    }
}
