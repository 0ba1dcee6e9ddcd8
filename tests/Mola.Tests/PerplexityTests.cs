using System.Text.Json;
using Mola.Evaluation;
using Mola.Models;
using Mola.Tokenization;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>
/// <c>mola perplexity</c> against the reference: llama-tiny's <c>expected.safetensors</c> holds two rows of
/// <c>input_ids</c> (BOS + the tokens of a text), their logits and the mean next-token loss, all computed
/// independently in float64. Texts are rebuilt from those rows, so the expected NLL is the fixture's.
/// </summary>
[Trait("Category", "Slow")]
public class PerplexityTests
{
    static readonly string Model = TestUtil.Fixture("llama-tiny");
    const int Bos = 1;

    sealed record Reference(long[][] Rows, float[] Logits, int Positions, int Vocab, double Loss);

    static Reference LoadReference()
    {
        var t = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny", "expected.safetensors"));
        var ids = t["input_ids"];
        var logits = t["logits"];
        var flat = ids.data<long>().ToArray();
        int T = (int)ids.shape[1];
        var rows = Enumerable.Range(0, (int)ids.shape[0]).Select(b => flat[(b * T)..((b + 1) * T)]).ToArray();
        var r = new Reference(rows, logits.data<float>().ToArray(), (int)logits.shape[1], (int)logits.shape[2], t["loss"].item<float>());
        foreach (var x in t.Values) x.Dispose();
        return r;
    }

    /// <summary>The text whose BOS + encoding is exactly <paramref name="ids"/> (asserted, not assumed).</summary>
    static string TextOf(MolaTokenizer tok, long[] ids)
    {
        Assert.Equal(Bos, ids[0]);
        Assert.DoesNotContain(Bos, ids[1..]); // a second BOS would mean the fixture repeated a short text
        string text = tok.Decode(ids[1..].Select(i => (int)i));
        Assert.Equal(ids.Select(i => (int)i), tok.Encode(text, bos: true));
        return text;
    }

    /// <summary>Mean next-token NLL of the first <paramref name="lengths"/>[b] tokens of each row, from the
    /// fixture's logits with a plain log-softmax (a causal model's logits at a position do not depend on
    /// the tokens after it, so a prefix's are those of the full row).</summary>
    static (double Nll, long Tokens) NaiveNll(Reference r, params (int Row, int Length)[] prefixes)
    {
        double sum = 0;
        long count = 0;
        foreach (var (b, length) in prefixes)
            for (int t = 0; t + 1 < length; t++)
            {
                var logits = r.Logits.AsSpan((b * r.Positions + t) * r.Vocab, r.Vocab);
                double max = double.NegativeInfinity;
                foreach (float x in logits) max = Math.Max(max, x);
                double z = 0;
                foreach (float x in logits) z += Math.Exp(x - max);
                sum += max + Math.Log(z) - logits[(int)r.Rows[b][t + 1]];
                count++;
            }
        return (sum / count, count);
    }

    static string WriteData(IEnumerable<string> texts)
    {
        string path = Path.Combine(TestUtil.TempDir(), "texts.jsonl");
        File.WriteAllLines(path, texts.Select(text => JsonSerializer.Serialize(new { text })));
        return path;
    }

    static void AssertRelClose(double expected, double actual, double tolerance, string what) =>
        Assert.True(Math.Abs(actual - expected) <= tolerance * Math.Abs(expected), $"{what}: {actual} vs expected {expected}");

    [Fact]
    public void NllOfTheFixtureTextsIsTheReferenceLoss()
    {
        var r = LoadReference();
        var tok = MolaTokenizer.Load(Model, bosId: 1, eosId: 2);
        var texts = r.Rows.Select(row => TextOf(tok, row)).ToList();
        // The naive loss used by the other tests agrees with the fixture's own.
        AssertRelClose(r.Loss, NaiveNll(r, (0, 12), (1, 12)).Nll, 1e-6, "naive loss from the fixture logits");

        var run = CliRunner.Run("perplexity", "--base-model", Model, "--data", WriteData(texts), "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        var json = run.LastJson();
        double nll = json.GetProperty("nll").GetDouble();
        AssertRelClose(r.Loss, nll, 1e-5, "nll");
        Assert.Equal(2 * 11, json.GetProperty("tokens").GetInt64());
        Assert.Equal(2, json.GetProperty("texts").GetInt32());
        AssertRelClose(Math.Exp(nll), json.GetProperty("perplexity").GetDouble(), 1e-12, "perplexity");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(8)]
    public void PaddingDoesNotChangeTheNll(int batchSize)
    {
        // Texts of 6, 12 and 3 tokens (BOS included): with batches of 2 or more the short ones are padded.
        var r = LoadReference();
        var tok = MolaTokenizer.Load(Model, bosId: 1, eosId: 2);
        (int Row, int Length)[] prefixes = [(1, 6), (0, 12), (0, 3)];
        var texts = prefixes.Select(p => TextOf(tok, r.Rows[p.Row][..p.Length])).ToList();
        var (want, tokens) = NaiveNll(r, prefixes);
        Assert.Equal(5 + 11 + 2, tokens);

        using (var model = ModelLoader.Load(Model, ScalarType.Float32))
        {
            var lib = Perplexity.Compute(model, tok, texts, batchSize);
            AssertRelClose(want, lib.Nll, 1e-5, $"library nll, batch size {batchSize}");
            Assert.Equal(tokens, lib.Tokens);
        }

        var run = CliRunner.Run("perplexity", "--base-model", Model, "--data", WriteData(texts), "--batch-size", batchSize.ToString(), "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        var json = run.LastJson();
        AssertRelClose(want, json.GetProperty("nll").GetDouble(), 1e-5, $"CLI nll, batch size {batchSize}");
        Assert.Equal(tokens, json.GetProperty("tokens").GetInt64());
        Assert.Equal(3, json.GetProperty("texts").GetInt32());
    }

    [Fact]
    public void HumanOutputGoesToStdoutWithoutJsonAndToStderrWithIt()
    {
        string data = WriteData(["the cell divides"]);
        var plain = CliRunner.Run("perplexity", "--base-model", Model, "--data", data);
        Assert.True(plain.ExitCode == 0, plain.ToString());
        Assert.Contains("perplexity", plain.Stdout);
        Assert.DoesNotContain("{", plain.Stdout);

        var json = CliRunner.Run("perplexity", "--base-model", Model, "--data", data, "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        Assert.Single(json.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("perplexity", json.Stderr);
        Assert.Equal(plain.Stdout.Split("nll ")[1].Split(' ')[0], json.LastJson().GetProperty("nll").GetDouble().ToString("F6"));
    }

    [Fact]
    public void BatchSizeBelowOneIsAnError()
    {
        var run = CliRunner.Run("perplexity", "--base-model", Model, "--data", WriteData(["a"]), "--batch-size", "0");
        Assert.Equal("--batch-size must be at least 1", run.SingleErrorLine());
    }
}
