using System.Text.Json;
using Mola.Adapters;
using Mola.Analysis;
using Mola.Generation;
using Mola.Tokenization;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>
/// An adapter saved by the original MoLA code (Fixtures/original-mola: llama-tiny-mola's weights as GCYZSL/MoLA's patched
/// PEFT 0.4 saves them, experts <c>lora_A_e</c> in <c>adapter_model.bin</c>, no top-k) used directly with
/// <c>--top-k</c>: its logits are the float64 reference's, its redundancy is the naive Frobenius of the .bin's own
/// tensors, and generate / perplexity / prune / analyze give what they give for the same weights in mola's layout.
/// </summary>
public class OriginalMolaTopKTests
{
    static readonly string Original = TestUtil.Fixture("original-mola", "adapter");
    static readonly string Ours = TestUtil.Fixture("llama-tiny-mola");
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    [Fact]
    public void LoadedWithItsTopKItGivesTheReferenceLogits()
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "expected.safetensors"));
        using var model = ModelLoader.Load(Llama);
        var adapter = AdapterModel.LoadForInference(model, Original, "1,2,2");
        Assert.Equal([1, 2, 2], adapter.Config.TopK);
        Assert.Equal([2, 4, 8], adapter.Config.NumExperts);
        using (no_grad())
        using (var output = adapter.Forward(f["input_ids"]))
            Assert.True(TestUtil.MaxAbsDiff(output.Logits, f["logits"]) < 1e-4);
    }

    [Fact]
    public void ItsRedundancyIsTheNaiveFrobeniusOfItsOwnTensors()
    {
        var report = Redundancy.Compute(Original, "1,2,2");
        Assert.Equal(Original, report.AdapterDir);
        using var bin = TorchBinFile.Open(Path.Combine(Original, "adapter_model.bin"));
        int[] experts = [2, 4, 8];
        foreach (var m in report.Modules)
        {
            string prefix = AnalysisTests.Prefix(m.Layer, m.Module);
            var a = Enumerable.Range(0, experts[m.Layer]).Select(e => bin.Read($"{prefix}.lora_A_{e}.weight")).ToList();
            var b = Enumerable.Range(0, experts[m.Layer]).Select(e => bin.Read($"{prefix}.lora_B_{e}.weight")).ToList();
            double expected = AnalysisTests.NaiveMeanPairwise(a, b);
            Assert.Equal(expected, m.MeanPairwiseFrobenius!.Value, 1e-9 * expected);
            foreach (var t in a.Concat(b)) t.Dispose();
        }
        Assert.Equal(3 * AnalysisTests.Modules.Length, report.Modules.Count);
        // The copy in mola's layout it was read through is gone.
        Assert.DoesNotContain(Directory.GetDirectories(Path.GetTempPath(), "mola-adapter-*"), d => Directory.GetLastWriteTimeUtc(d) > DateTime.UtcNow.AddMinutes(-1));
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void GeneratePerplexityPruneAndAnalyzeTakeTopK()
    {
        var timeout = TimeSpan.FromMinutes(3);
        string data = Path.Combine(TestUtil.TempDir(), "texts.jsonl");
        File.WriteAllText(data, "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n{\"text\": \"Hello world\"}\n");

        string[] generate = ["generate", "--base-model", Llama, "--prompt", "Once upon", "--max-new-tokens", "6", "--json"];
        var ours = CliRunner.Run([.. generate, "--adapter", Ours], timeout);
        var original = CliRunner.Run([.. generate, "--adapter", Original, "--top-k", "1,2,2"], timeout);
        Assert.True(original.ExitCode == 0, original.ToString());
        Assert.Equal(ours.LastJson().GetProperty("ids").ToString(), original.LastJson().GetProperty("ids").ToString());

        string[] perplexity = ["perplexity", "--base-model", Llama, "--data", data, "--json"];
        var ppl = CliRunner.Run([.. perplexity, "--adapter", Original, "--top-k", "1,2,2"], timeout);
        Assert.True(ppl.ExitCode == 0, ppl.ToString());
        double want = CliRunner.Run([.. perplexity, "--adapter", Ours], timeout).LastJson().GetProperty("nll").GetDouble();
        Assert.Equal(want, ppl.LastJson().GetProperty("nll").GetDouble(), 1e-6 * want);

        string prunedOurs = Path.Combine(TestUtil.TempDir(), "pruned"), prunedOriginal = Path.Combine(TestUtil.TempDir(), "pruned");
        Assert.Equal(0, CliRunner.Run(["prune", "--adapter", Ours, "--output", prunedOurs, "--keep-experts", "10"], timeout).ExitCode);
        var pr = CliRunner.Run(["prune", "--adapter", Original, "--top-k", "1,2,2", "--output", prunedOriginal, "--keep-experts", "10"], timeout);
        Assert.True(pr.ExitCode == 0, pr.ToString());
        // The same config but for the dropout, which the original's config records (0.05) and llama-tiny-mola's does not.
        string Config(string dir) => File.ReadAllText(Path.Combine(dir, AdapterFile.ConfigFile)).Replace("\"lora_dropout\": 0.05", "\"lora_dropout\": 0");
        Assert.Equal(Config(prunedOurs), Config(prunedOriginal));
        var want2 = TestUtil.ReadAll(Path.Combine(prunedOurs, AdapterFile.WeightsFile));
        var got2 = TestUtil.ReadAll(Path.Combine(prunedOriginal, AdapterFile.WeightsFile));
        Assert.Equal(want2.Keys.Order(), got2.Keys.Order());
        Assert.All(want2, kv => Assert.True(TestUtil.BitEqual(got2[kv.Key], kv.Value), kv.Key));

        string an = Path.Combine(TestUtil.TempDir(), "an"), anOurs = Path.Combine(TestUtil.TempDir(), "an");
        string[] analyze = ["analyze", "--base-model", Llama, "--data", data];
        var a = CliRunner.Run([.. analyze, "--adapter", Original, "--top-k", "1,2,2", "--output", an], timeout);
        Assert.True(a.ExitCode == 0, a.ToString());
        Assert.Equal(0, CliRunner.Run([.. analyze, "--adapter", Ours, "--output", anOurs], timeout).ExitCode);
        Assert.Equal(File.ReadAllText(Path.Combine(anOurs, "routing.csv")), File.ReadAllText(Path.Combine(an, "routing.csv")));
        Assert.Equal(File.ReadAllText(Path.Combine(anOurs, "redundancy.csv")), File.ReadAllText(Path.Combine(an, "redundancy.csv")));
    }

    /// <summary>serve's adapters share one --top-k: the original's takes it, mola's own keeps the top_k it records.</summary>
    [Fact]
    public async Task ServedBesideOurOwnLayoutItAnswersTheSameTokens()
    {
        using var model = ModelLoader.Load(Llama);
        var tok = MolaTokenizer.Load(Llama);
        using var set = new AdapterSet(model, [("ours", Ours), ("original", Original)], "1,2,2");
        using var engine = new BatchEngine(model, tok, set, "llama-tiny", maxBatch: 4);
        var options = new GenerationOptions { MaxNewTokens = 12 };
        var prompt = tok.Encode("the cell energy", bos: true);
        var jobs = new[] { -1, 0, 1 }.Select(a => engine.Submit(new EngineRequest { PromptIds = prompt, Adapter = a, Options = options })).ToList();
        var results = await Task.WhenAll(jobs.Select(j => j.Result));
        Assert.Equal(results[1].Tokens, results[2].Tokens);
        Assert.NotEqual(results[0].Tokens, results[1].Tokens);   // the adapter changes the output
    }

    [Fact]
    public void WithoutTopKOrWithoutAnAdapterTheErrorSaysWhatToGive()
    {
        var r = CliRunner.Run("generate", "--base-model", Llama, "--adapter", Original, "--prompt", "Once upon");
        Assert.Equal($"{Path.Combine(Original, "adapter_model.bin")}: an adapter saved by the original MoLA code (experts named lora_A_<e>), which records no top_k; " +
            "give it with --top-k K (one value or one per layer, as the original's scripts took it), or write the adapter in mola's format once with: " +
            $"mola convert-adapter --adapter {Original} --output DIR --top-k K", r.SingleErrorLine());
        Assert.Equal("--top-k: it is the top-k of an --adapter saved by the original MoLA code, and no --adapter is given",
            CliRunner.Run("generate", "--base-model", Llama, "--prompt", "Once upon", "--top-k", "2").SingleErrorLine());
        Assert.Contains($"--top-k: {Path.Combine(Ours, AdapterFile.ConfigFile)} records its own top-k",
            CliRunner.Run("analyze", "--adapter", Ours, "--top-k", "2", "--output", Path.Combine(TestUtil.TempDir(), "x")).SingleErrorLine());
        // A PEFT LoRA (here as .bin) reaches the redundancy reader and is refused by its own path, not a converted copy's.
        string lora = TestUtil.Fixture("peft", "lora-bin");
        Assert.Contains($"{Path.Combine(lora, AdapterFile.ConfigFile)}: peft_type is \"LORA\"",
            CliRunner.Run("prune", "--adapter", lora, "--output", Path.Combine(TestUtil.TempDir(), "p"), "--keep-experts", "3").SingleErrorLine());
    }
}
