using System.IO.Compression;
using System.Text;
using System.Text.Json;
using Mola.Tokenization;
using Xunit;

namespace Mola.Tests;

/// <summary>Our encoder against SentencePiece 0.1.97 itself: BPE models of 16k and 8k pieces with byte fallback
/// trained by spm_train, and the ids and decoded text SentencePiece gives for thousands of strings (made by
/// tools/tokenizer-fixtures/make_fixtures.py; Fixtures/spm).</summary>
public class SentencePieceParityTests
{
    sealed record Case(string Text, Dictionary<string, int[]> Ids, Dictionary<string, string> Decoded);

    /// <summary>The text of a gzipped fixture.</summary>
    static string Gunzip(string name)
    {
        using var z = new GZipStream(File.OpenRead(TestUtil.Fixture("spm", name)), CompressionMode.Decompress);
        using var reader = new StreamReader(z, Encoding.UTF8);
        return reader.ReadToEnd();
    }

    /// <summary>A gzipped fixture unpacked under its own name (without .gz) into a fresh directory.</summary>
    static string Unpacked(string name)
    {
        string file = Path.Combine(TestUtil.TempDir(), name[..^".gz".Length]);
        using (var z = new GZipStream(File.OpenRead(TestUtil.Fixture("spm", name)), CompressionMode.Decompress))
        using (var output = File.Create(file))
            z.CopyTo(output);
        return file;
    }

    static readonly Lazy<List<Case>> Cases = new(() =>
    {
        using var doc = JsonDocument.Parse(Gunzip("cases.json.gz"));
        var cases = new List<Case>();
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            var ids = new Dictionary<string, int[]>();
            var decoded = new Dictionary<string, string>();
            foreach (var p in c.EnumerateObject())
            {
                if (p.Name == "text") continue;
                if (p.Name.EndsWith(".decoded")) decoded[p.Name[..^".decoded".Length]] = p.Value.GetString()!;
                else ids[p.Name] = [.. p.Value.EnumerateArray().Select(x => x.GetInt32())];
            }
            cases.Add(new Case(c.GetProperty("text").GetString()!, ids, decoded));
        }
        return cases;
    });

    static string Show(string s) => JsonSerializer.Serialize(s);

    /// <summary>Fails with the first few differences, each with its text and both id lists.</summary>
    static void AssertAllEqual(string what, IEnumerable<(string Text, string Expected, string Actual)> results)
    {
        var all = results.ToList();
        var bad = all.Where(r => r.Expected != r.Actual).ToList();
        var report = new StringBuilder($"{what}: {bad.Count} of {all.Count} strings differ from SentencePiece\n");
        foreach (var (text, expected, actual) in bad.Take(5))
            report.Append($"  {Show(text)}\n    sentencepiece: {expected}\n    ours:          {actual}\n");
        Assert.True(bad.Count == 0, report.ToString());
    }

    static string Ids(IEnumerable<int> ids) => string.Join(' ', ids);

    [Fact]
    public void TheFixturesHoldThousandsOfStringsOfEveryClass()
    {
        var texts = Cases.Value.Select(c => c.Text).ToList();
        Assert.True(texts.Count >= 2000, $"{texts.Count} strings");
        foreach (char p in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
            Assert.Contains(new string(p, 16), texts);
        for (int n = 1; n <= 64; n++)
            Assert.Contains(new string(' ', n), texts);
        Assert.Contains(texts, t => t.Contains("\r\n"));
        Assert.Contains(texts, t => t.Contains('\t'));
        Assert.Contains(texts, t => t.Contains("👨‍👩‍👧‍👦"));
    }

    [Theory]
    [InlineData("llama16k")]          // Llama-2's options: no whitespace clean-up, dummy prefix, whitespace-only pieces
    [InlineData("llama16k-noprefix")] // the same pieces without the dummy prefix
    [InlineData("llama16k-nobytes")]  // ... without byte fallback: a run of unknown characters is one <unk>
    [InlineData("plain8k")]           // extra whitespace removed, user-defined and control pieces, some pieces unused
    public void EncodesLikeSentencePiece(string model)
    {
        var tok = MolaTokenizer.Load(TestUtil.Fixture("spm", model + ".model"));
        AssertAllEqual(model, Cases.Value.Select(c => (c.Text, Ids(c.Ids[model]), Ids(tok.Encode(c.Text)))));
    }

    [Theory]
    [InlineData("llama16k")]
    [InlineData("llama16k-noprefix")]
    [InlineData("llama16k-nobytes")]
    [InlineData("plain8k")]
    public void DecodesLikeSentencePiece(string model)
    {
        var tok = MolaTokenizer.Load(TestUtil.Fixture("spm", model + ".model"));
        AssertAllEqual(model + " decode", Cases.Value.Select(c => (c.Text, c.Decoded[model], tok.Decode(c.Ids[model]))));
    }

    [Fact]
    public void TokenizerJsonInTheLegacyLayoutEncodesAndDecodesLikeTheModelFile()
    {
        var tok = MolaTokenizer.Load(Unpacked("llama16k-legacy.tokenizer.json.gz"));
        AssertAllEqual("legacy tokenizer.json", Cases.Value.Select(c => (c.Text, Ids(c.Ids["llama16k"]), Ids(tok.Encode(c.Text)))));
        AssertAllEqual("legacy tokenizer.json decode", Cases.Value.Select(c => (c.Text, c.Decoded["llama16k"], tok.Decode(c.Ids["llama16k"]))));
        Assert.Equal((1, 2, 16000), (tok.BosId, tok.EosId, tok.VocabSize));
    }

    [Fact]
    public void TokenizerJsonWithMetaspaceEncodesLikeTheModelFileExceptAfterALeadingSpace()
    {
        // Hugging Face's Metaspace puts no ▁ before a text that already starts with one (pre_tokenizers/metaspace.rs),
        // so there the ids are SentencePiece's without the dummy prefix.
        var tok = MolaTokenizer.Load(Unpacked("llama16k-metaspace.tokenizer.json.gz"));
        AssertAllEqual("Metaspace tokenizer.json", Cases.Value.Select(c =>
            (c.Text, Ids(c.Ids[c.Text.StartsWith(' ') || c.Text.StartsWith('\u2581') ? "llama16k-noprefix" : "llama16k"]), Ids(tok.Encode(c.Text)))));
    }

    // Mistral-7B's real vocabulary (32,000 pieces, 58,980 merges; Apache-2.0), as the npm package
    // mistral-tokenizer-js ships it, made into a tokenizer.json and a SentencePiece model
    // (tools/tokenizer-fixtures/real_vocab.py); the ids are SentencePiece's on that model.
    sealed record MistralCases(List<(string Text, int[] Ids)> Package, List<int[]> Ids, List<string> Decoded);

    static readonly Lazy<MistralCases> Mistral = new(() =>
    {
        using var doc = JsonDocument.Parse(Gunzip("mistral-cases.json.gz"));
        var root = doc.RootElement;
        static int[] IdsOf(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];
        return new MistralCases(
            [.. root.GetProperty("package_cases").EnumerateArray().Select(c => (c.GetProperty("text").GetString()!, IdsOf(c.GetProperty("ids"))))],
            [.. root.GetProperty("ids").EnumerateArray().Select(IdsOf)],
            [.. root.GetProperty("decoded").EnumerateArray().Select(d => d.GetString()!)]);
    });

    [Theory]
    [InlineData("mistral.model.gz")]
    [InlineData("mistral.tokenizer.json.gz")]
    public void OnMistralsVocabularyEncodesAndDecodesLikeSentencePiece(string file)
    {
        var tok = MolaTokenizer.Load(Unpacked(file));
        Assert.Equal(32000, tok.VocabSize);
        var texts = Cases.Value.Select(c => c.Text).ToList();
        var m = Mistral.Value;
        Assert.Equal(texts.Count, m.Ids.Count);
        AssertAllEqual(file, texts.Select((t, i) => (t, Ids(m.Ids[i]), Ids(tok.Encode(t)))));
        AssertAllEqual(file + " decode", texts.Select((t, i) => (t, m.Decoded[i], tok.Decode(m.Ids[i]))));
        // The package's own tests, whose ids (BOS first) come from Mistral's tokenizer itself.
        Assert.Equal(12, m.Package.Count);
        AssertAllEqual(file + " package tests", m.Package.Select(c => (c.Text, Ids(c.Ids), Ids(tok.Encode(c.Text, bos: true)))));
    }

    [Fact]
    public void ADirectoryWithOnlyATokenizerJsonUsesIt()
    {
        string dir = TestUtil.TempDir();
        File.Copy(Unpacked("llama16k-legacy.tokenizer.json.gz"), Path.Combine(dir, "tokenizer.json"));
        var tok = MolaTokenizer.Load(dir, 1, 2, 16000);
        var expected = Cases.Value.First(c => c.Text == "x----y");
        Assert.Equal(expected.Ids["llama16k"], tok.Encode("x----y"));
        Assert.Equal(Path.Combine(dir, "tokenizer.json"), tok.Source);
    }

    [Fact]
    public void ADirectoryWithNeitherFileSaysWhatItNeeds()
    {
        string dir = TestUtil.TempDir();
        var e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(dir));
        Assert.Equal($"{Path.Combine(dir, "tokenizer.model")}: not found (the base model directory needs a SentencePiece tokenizer.model or a tokenizer.json)", e.Message);
    }

    [Fact]
    public void IdsBeyondTheVocabularyDecodeToNothing()
    {
        // A model's embedding table may be larger than its tokenizer; generation can sample such an id.
        var tok = MolaTokenizer.Load(TestUtil.Fixture("spm", "llama16k.model"));
        var ids = Cases.Value.First(c => c.Text == "x----y").Ids["llama16k"];
        Assert.Equal("x----y", tok.Decode([.. ids, 16000, 40000]));
    }

    [Fact]
    public void AModelCutAnywhereIsRefusedInOneLine()
    {
        byte[] whole = File.ReadAllBytes(TestUtil.Fixture("spm", "plain8k.model"));
        string file = Path.Combine(TestUtil.TempDir(), "tokenizer.model");
        var rng = new Random(3);
        // The pieces come first, the trainer and normaliser specs last: cuts everywhere, and many near the end.
        var cuts = Enumerable.Range(0, 40).Select(_ => rng.Next(1, whole.Length))
            .Concat(Enumerable.Range(1, 60).Select(k => whole.Length - k));
        foreach (int cut in cuts)
        {
            File.WriteAllBytes(file, whole[..cut]);
            var e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
            Assert.Equal($"{file}: not a readable SentencePiece model (damaged, truncated or another format)", e.Message);
        }
    }

    [Fact]
    public void ANormalizerOtherThanIdentityIsRefused()
    {
        string file = TestUtil.Fixture("spm", "nfkc.model");
        var e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
        Assert.Equal($"{file}: normalizer 'nmt_nfkc' (a precompiled character map); only the identity normalizer is supported", e.Message);
    }

    [Fact]
    public void AUnigramModelIsRefused()
    {
        string file = TestUtil.Fixture("spm", "unigram.model");
        var e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
        Assert.Equal($"{file}: model type UNIGRAM; only BPE models (LLaMA-2, Mistral, Gemma v1) are supported", e.Message);
    }

    static string WithJson(Func<string, string> edit)
    {
        string dir = TestUtil.TempDir();
        string file = Path.Combine(dir, "tokenizer.json");
        File.WriteAllText(file, edit(Gunzip("llama16k-metaspace.tokenizer.json.gz")));
        return file;
    }

    [Fact]
    public void UnsupportedTokenizerJsonLayoutsAreRefusedByName()
    {
        const string metaspace = "{\"type\":\"Metaspace\",\"replacement\":\"\u2581\",\"prepend_scheme\":\"first\",\"split\":false}";
        string file = WithJson(s => s.Replace(metaspace, "{\"type\":\"ByteLevel\",\"add_prefix_space\":false}"));
        var e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
        Assert.Equal($"{file}: pre_tokenizer 'ByteLevel' is not supported (expected Metaspace with replacement \"\u2581\", or none)", e.Message);

        file = WithJson(s => s.Replace("\"split\":false", "\"split\":true"));
        e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
        Assert.Equal($"{file}: pre_tokenizer Metaspace with split true (or unset) is not supported; Llama/Mistral have \"split\": false", e.Message);

        file = WithJson(s => s.Replace("\"normalizer\":null", "\"normalizer\":{\"type\":\"NFKC\"}"));
        e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
        Assert.StartsWith($"{file}: normalizer 'NFKC' is not supported", e.Message);

        file = WithJson(s => s.Replace("\"type\":\"BPE\"", "\"type\":\"Unigram\""));
        e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
        Assert.Equal($"{file}: model type 'Unigram'; only BPE (the Llama/Mistral layout) is supported", e.Message);

        file = WithJson(s => s[..(s.Length / 2)]);
        e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(file));
        Assert.Matches($@"^{System.Text.RegularExpressions.Regex.Escape(file)}:\d+: invalid JSON \(", e.Message);
    }
}
