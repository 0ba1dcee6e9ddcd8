using Microsoft.ML.Tokenizers;
using Mola.Tokenization;

namespace Mola.Cli.Bench;

/// <summary>Encoding speed of <see cref="MolaTokenizer"/> against Microsoft.ML.Tokenizers' LlamaTokenizer (what
/// the project used before) on the lines of a text file, one thread, and how many lines the two encode or
/// decode differently.</summary>
public sealed record TokenizerBenchReport(
    int Lines, long Chars, long Tokens, double LoadMs,
    double OursMs, double OursColdMs, double? LibraryMs,
    int? EncodeDiffers, int? DecodeDiffers, string? FirstDifference)
{
    public double OursTokensPerSecond => Tokens / (OursMs / 1000);
    public double OursColdTokensPerSecond => Tokens / (OursColdMs / 1000);
    public double? LibraryTokensPerSecond => LibraryMs is double ms ? Tokens / (ms / 1000) : null;
}

public static class TokenizerBenchmark
{
    /// <param name="tokenizer">A tokenizer.model, tokenizer.json or model directory. The library runs only on a
    /// tokenizer.model (it reads no tokenizer.json).</param>
    /// <param name="textFile">UTF-8 text; each line is encoded as one text, as data preparation encodes records.</param>
    public static TokenizerBenchReport Run(string tokenizer, string textFile, int rounds, Clock clock, Action<string> log)
    {
        if (!File.Exists(textFile))
            throw new MolaException($"{textFile}: not found (--text names the text to encode)");
        var lines = File.ReadAllLines(textFile);
        long chars = lines.Sum(l => (long)l.Length);
        double loadMs = Timing.Measure(() => MolaTokenizer.Load(tokenizer), clock);
        var ours = MolaTokenizer.Load(tokenizer);
        LlamaTokenizer? library = null;
        if (!ours.Source.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            using var stream = File.OpenRead(ours.Source);
            library = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        }

        long tokens = 0;
        int? encodeDiffers = null, decodeDiffers = null;
        string? first = null;
        var ourIds = lines.Select(l => ours.Encode(l)).ToList();
        tokens = ourIds.Sum(ids => (long)ids.Count);
        if (library != null)
        {
            encodeDiffers = decodeDiffers = 0;
            for (int i = 0; i < lines.Length; i++)
            {
                var theirs = library.EncodeToIds(lines[i], addBeginningOfSentence: false, addEndOfSentence: false);
                if (!theirs.SequenceEqual(ourIds[i]))
                {
                    encodeDiffers++;
                    first ??= $"line {i + 1}: ours {string.Join(' ', ourIds[i].Take(12))}, library {string.Join(' ', theirs.Take(12))}";
                }
                if (library.Decode(ourIds[i], considerSpecialTokens: false) != ours.Decode(ourIds[i])) decodeDiffers++;
            }
        }
        log($"{lines.Length} lines, {chars} characters, {tokens} tokens; timing {rounds} rounds ...");

        var variants = new List<(string, Action)>
        {
            ("ours", () => { foreach (var l in lines) ours.Encode(l); }),
            // A fresh tokenizer: its word cache fills during the pass (the load itself is timed apart).
            ("ours_cold", () => { var fresh = MolaTokenizer.Load(tokenizer); foreach (var l in lines) fresh.Encode(l); }),
        };
        if (library != null)
            variants.Add(("library", () => { foreach (var l in lines) library.EncodeToIds(l, addBeginningOfSentence: false, addEndOfSentence: false); }));
        var t = Timing.Interleaved(variants, warmup: 1, rounds, clock);
        return new TokenizerBenchReport(lines.Length, chars, tokens, loadMs, t[0].Median, t[1].Median - loadMs,
            library != null ? t[2].Median : null, encodeDiffers, decodeDiffers, first);
    }
}
