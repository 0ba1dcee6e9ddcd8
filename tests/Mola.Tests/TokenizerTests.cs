using System.Text.Json;
using Mola.Tokenization;
using Xunit;

namespace Mola.Tests;

public class TokenizerTests
{
    public static IEnumerable<object[]> Cases()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestUtil.Fixture("tokenizer", "tokenizer_cases.json")));
        int i = 0;
        foreach (var c in doc.RootElement.EnumerateArray())
            yield return [i++, c.GetProperty("text").GetString()!, c.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray(), c.GetProperty("decoded").GetString()!];
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EncodesAndDecodesLikeSentencePiece(int index, string text, int[] ids, string decoded)
    {
        var tok = MolaTokenizer.Load(TestUtil.Fixture("tokenizer"));
        Assert.True(index >= 0);
        Assert.Equal(ids, tok.Encode(text));
        Assert.Equal(decoded, tok.Decode(ids));
    }

    [Fact]
    public void AllSeventeenCasesArePresent() => Assert.Equal(17, Cases().Count());

    [Fact]
    public void BosAndEosComeFromTheArguments()
    {
        var tok = MolaTokenizer.Load(TestUtil.Fixture("llama-tiny"), bosId: 1, eosId: 2);
        var ids = tok.Encode("the cell", bos: true, eos: true);
        Assert.Equal(1, ids[0]);
        Assert.Equal(2, ids[^1]);
        Assert.Equal("the cell", tok.Decode(ids));
    }

    [Fact]
    public void ATruncatedTokenizerIsNamed()
    {
        string dir = TestUtil.CopyFixture("llama-tiny");
        string file = Path.Combine(dir, "tokenizer.model");
        File.WriteAllBytes(file, File.ReadAllBytes(file)[..100]);
        var e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(dir));
        Assert.Equal($"{file}: not a readable SentencePiece model (damaged, truncated or another format)", e.Message);
    }

    [Fact]
    public void ATokenizerLargerThanTheModelsVocabularyIsRefused()
    {
        // The fixture tokenizer has 400 pieces (llama-tiny's vocab_size is 400).
        Assert.Equal("the cell", MolaTokenizer.Load(TestUtil.Fixture("llama-tiny"), 1, 2, vocabSize: 400).Decode(MolaTokenizer.Load(TestUtil.Fixture("llama-tiny")).Encode("the cell")));
        var e = Assert.Throws<MolaException>(() => MolaTokenizer.Load(TestUtil.Fixture("llama-tiny"), 1, 2, vocabSize: 300));
        Assert.Contains("tokenizer.model: 400 pieces, but the model's vocab_size is 300", e.Message);
    }
}
