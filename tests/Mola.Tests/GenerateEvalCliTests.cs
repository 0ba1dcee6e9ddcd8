using System.Text.Json;
using Mola.Data;
using Mola.Evaluation;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;
using Xunit;

namespace Mola.Tests;

[Trait("Category", "Slow")]
public class GenerateEvalCliTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");
    static readonly string Adapter = TestUtil.Fixture("llama-tiny-mola");

    [Fact]
    public void GenerateJsonGivesTheWholeSequenceAndTheGreedyContinuation()
    {
        var r = CliRunner.Run("generate", "--base-model", Llama, "--adapter", Adapter, "--prompt", "the cell energy", "--max-new-tokens", "7", "--json");
        Assert.Equal(0, r.ExitCode);
        var j = r.LastJson();
        var ids = j.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
        var tok = MolaTokenizer.Load(Llama);
        var prompt = tok.Encode("the cell energy", bos: true);
        Assert.Equal(prompt, ids.Take(prompt.Count));
        // The same continuation from the library (greedy, adapter attached, independent of the CLI)
        using var model = ModelLoader.Load(Llama);
        Mola.Adapters.AdapterModel.Load(model, Adapter).eval();
        var want = TextGenerator.Generate(model, [prompt], new GenerationOptions { MaxNewTokens = 7 }, tok.EosId)[0];
        Assert.Equal(want, ids.Skip(prompt.Count));
        Assert.Equal(tok.Decode(want), j.GetProperty("text").GetString());
        Assert.True(j.GetProperty("tokens_per_second").GetDouble() > 0);
    }

    [Fact]
    public void GenerateInstructionUsesTheTemplateAndPrintsOnlyTheResponse()
    {
        // The Alpaca prompt is longer than the fixture's 128 positions, which generate refuses: a copy with room for it.
        string model = TestUtil.CopyFixture("llama-tiny"), config = Path.Combine(model, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 512"));
        var r = CliRunner.Run("generate", "--base-model", model, "--instruction", "Name a rock.", "--input", "north river", "--max-new-tokens", "5", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        var ids = r.LastJson().GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
        var tok = MolaTokenizer.Load(Llama);
        var prompt = tok.Encode(PromptTemplate.Alpaca.Prompt("Name a rock.", "north river"), bos: true);
        Assert.Equal(prompt, ids.Take(prompt.Count));
        Assert.DoesNotContain("### Response", r.LastJson().GetProperty("text").GetString());
    }

    [Theory]
    [InlineData(new[] { "--instruction", "x", "--prompt", "y" }, "either --prompt")]
    [InlineData(new[] { "--prompt", "y", "--greedy", "--temperature", "0.7" }, "--greedy cannot be combined")]
    [InlineData(new[] { "--prompt", "y", "--top-p", "1.5" }, "--top-p must be in (0, 1]")]
    public void GenerateRefusesContradictoryOptions(string[] extra, string message)
    {
        var r = CliRunner.Run(["generate", "--base-model", Llama, .. extra]);
        Assert.Contains(message, r.SingleErrorLine());
    }

    public static TheoryData<string, string> ExampleTasks()
    {
        var d = new TheoryData<string, string>();
        foreach (var t in Benchmarks.Names) d.Add(t, t == "cola" || t == "scienceqa" ? "generate" : "likelihood");
        d.Add("mrpc", "generate");
        d.Add("openbookqa", "generate");
        return d;
    }

    [Theory]
    [MemberData(nameof(ExampleTasks))]
    public void ExampleFilesEvaluateOnATinyModel(string task, string scoring)
    {
        string output = Path.Combine(TestUtil.TempDir(), "pred.jsonl");
        var r = CliRunner.Run(["eval", "--base-model", Llama, "--adapter", Adapter, "--data", Path.Combine(TestUtil.ExamplesDir(), task + ".json"),
            "--task", task, "--scoring", scoring, "--max-new-tokens", "6", "--output", output, "--json"], TimeSpan.FromSeconds(120));
        Assert.True(r.ExitCode == 0, r.ToString());
        var j = r.LastJson();
        int n = j.GetProperty("n").GetInt32();
        Assert.Equal(8, n);
        var lines = File.ReadAllLines(output).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(n, lines.Count);
        // The reported accuracy is the share of predictions file lines marked correct, and those are exactly gold == predicted.
        Assert.All(lines, l => Assert.Equal(l.GetProperty("gold").GetString() == (l.GetProperty("predicted").ValueKind == JsonValueKind.Null ? null : l.GetProperty("predicted").GetString()), l.GetProperty("correct").GetBoolean()));
        Assert.Equal(lines.Count(l => l.GetProperty("correct").GetBoolean()) / (double)n, j.GetProperty("accuracy").GetDouble(), 9);
        int unparsed = lines.Count(l => l.GetProperty("predicted").ValueKind == JsonValueKind.Null);
        Assert.Equal(unparsed, j.GetProperty("unparsed").GetInt32());
        if (scoring == "likelihood") Assert.Equal(0, unparsed);
        Assert.Equal(Benchmarks.Get(task).Labels.Count == 2, j.GetProperty("mcc").ValueKind == JsonValueKind.Number);   // two-class tasks report MCC
    }

    [Fact]
    public void GoingPastTheModelsPositionsIsWarnedAbout()
    {
        // llama-tiny has max_position_embeddings 128.
        var past = CliRunner.Run("generate", "--base-model", Llama, "--prompt", "the cell", "--max-new-tokens", "130");
        Assert.True(past.ExitCode == 0, past.ToString());
        Assert.Matches(@"warning: the prompt with --max-new-tokens comes to 13\d tokens, past the model's 128 positions", past.Stdout + past.Stderr);
        var within = CliRunner.Run("generate", "--base-model", Llama, "--prompt", "the cell", "--max-new-tokens", "8");
        Assert.DoesNotContain("warning:", within.Stdout + within.Stderr);

        var eval = CliRunner.Run("eval", "--base-model", Llama, "--data", Path.Combine(TestUtil.ExamplesDir(), "scienceqa.json"),
            "--task", "scienceqa", "--scoring", "generate", "--max-new-tokens", "128");
        Assert.True(eval.ExitCode == 0, eval.ToString());
        Assert.Contains("warning: 8 of 8 records' prompts with --max-new-tokens come to up to", eval.Stdout + eval.Stderr);
    }

    [Fact]
    public void OutputPathsThatWouldDestroyAnInputOrCannotBeWrittenAreRefusedFirst()
    {
        string dir = TestUtil.TempDir();
        string data = Path.Combine(dir, "records.json");
        File.Copy(Path.Combine(TestUtil.ExamplesDir(), "scienceqa.json"), data);
        string before = File.ReadAllText(data);
        string[] eval = ["eval", "--base-model", Llama, "--data", data, "--task", "scienceqa", "--scoring", "likelihood", "--output"];
        Assert.Contains("is also an input of this command", CliRunner.Run([.. eval, data]).SingleErrorLine());
        Assert.Equal(before, File.ReadAllText(data));
        Assert.Contains("is a directory (expected a file path)", CliRunner.Run([.. eval, dir]).SingleErrorLine());

        Assert.Contains("is a file (expected a directory)", CliRunner.Run(["train", "--output", data, "--max-steps", "1"]).SingleErrorLine());
        Assert.Contains("is a file (expected a directory)", CliRunner.Run(["analyze", "--adapter", Adapter, "--output", data]).SingleErrorLine());
        Assert.Equal(before, File.ReadAllText(data));
    }

    [Fact]
    public void LikelihoodScoringPicksTheMostProbableContinuation()
    {
        // Independent check of one record: score each option's continuation with plain per-token log-softmax, over
        // the tokens training learns for that output (the full text's, after the prompt's).
        using var model = ModelLoader.Load(Llama);
        var tok = MolaTokenizer.Load(Llama);
        var bench = Benchmarks.Get("openbookqa");
        var record = InstructionRecord.Load(Path.Combine(TestUtil.ExamplesDir(), "openbookqa.json"))[0];
        var result = Evaluator.Run(model, tok, PromptTemplate.Alpaca, bench, [record], Scoring.Likelihood);
        var prompt = tok.Encode(PromptTemplate.Alpaca.Prompt(record.Instruction, record.Input), bos: true);
        using var _ = TorchSharp.torch.no_grad();
        foreach (var label in bench.CandidateLabels(PromptTemplate.Alpaca.Prompt(record.Instruction, record.Input)))
        {
            var trained = InstructionDataset.Tokenize(record with { Output = bench.Continuation(label) }, PromptTemplate.Alpaca, tok,
                new TokenizeOptions { TrainOnInputs = false, AddEos = false });
            Assert.Equal(prompt.Count, trained.Labels.Count(l => l == Losses.IgnoreIndex));
            var seq = trained.InputIds.Select(x => (long)x).ToArray();
            using var logits = model.Forward(TorchSharp.torch.tensor(seq, [1, seq.Length]));
            double sum = 0;
            for (int t = prompt.Count; t < seq.Length; t++)
            {
                var row = logits[0, t - 1].to(TorchSharp.torch.ScalarType.Float64);
                double logZ = Math.Log(row.exp().sum().item<double>());
                sum += row[seq[t]].item<double>() - logZ;
            }
            Assert.Equal(sum, result.Predictions[0].Scores![label], 3);
        }
        Assert.Equal(result.Predictions[0].Scores!.MaxBy(kv => kv.Value).Key, result.Predictions[0].Predicted);
    }
}
