using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class InstructionDatasetTests
{
    const long Ignore = -100;
    static readonly MolaTokenizer Tok = MolaTokenizer.Load(TestUtil.Fixture("tokenizer"));
    static readonly int Bos = Tok.BosId, Eos = Tok.EosId;

    static readonly InstructionRecord Ocean = new("Name the ocean.", "", "The answer is B.");

    static TokenizedExample Tokenize(InstructionRecord r, TokenizeOptions o, PromptTemplate? t = null) =>
        InstructionDataset.Tokenize(r, t ?? PromptTemplate.Alpaca, Tok, o);

    /// <summary>The expected ids written out: BOS, the text's tokens, EOS.</summary>
    static List<int> BosTextEos(string text) => [Bos, .. Tok.Encode(text), Eos];

    [Fact]
    public void FullTextIsBosTokensEosAndItsOwnLabels()
    {
        var ex = Tokenize(Ocean, new TokenizeOptions(CutoffLen: 256));
        string full = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
                      "### Instruction:\nName the ocean.\n\n### Response:\nThe answer is B.";
        Assert.Equal(BosTextEos(full), ex.InputIds);
        Assert.Equal(ex.InputIds.Select(i => (long)i), ex.Labels);
    }

    [Fact]
    public void PromptPositionsAreMaskedWhenNotTrainingOnInputs()
    {
        var ex = Tokenize(Ocean, new TokenizeOptions(TrainOnInputs: false));
        // The boundary, from the prompt alone: BOS and its tokens.
        int promptLen = 1 + Tok.Encode(PromptTemplate.Alpaca.Prompt("Name the ocean.")).Count;
        Assert.True(promptLen > 50 && promptLen < ex.Length - 5);
        Assert.All(ex.Labels[..promptLen], l => Assert.Equal(Ignore, l));
        Assert.Equal(ex.InputIds[promptLen..].Select(i => (long)i), ex.Labels[promptLen..]);
        Assert.Equal(Eos, ex.Labels[^1]);
    }

    [Fact]
    public void MaskCountsThePromptsTokensEvenWhenTheyAreNotAPrefix()
    {
        // "inherit" + "ed energy": SentencePiece merges across the boundary ("▁inherited" is one piece),
        // so the prompt's 3 pieces are not a prefix of the full text's; the original masks a count, 1 + 3.
        var template = new PromptTemplate("bare", "", "{instruction}{input}", "{instruction}", "");
        var ex = Tokenize(new InstructionRecord("inherit", "", "ed energy"), new TokenizeOptions(TrainOnInputs: false), template);
        var promptIds = Tok.Encode("inherit");
        Assert.Equal(BosTextEos("inherited energy"), ex.InputIds);
        Assert.NotEqual(promptIds[0], ex.InputIds[1]);
        int promptLen = 1 + promptIds.Count;
        Assert.All(ex.Labels[..promptLen], l => Assert.Equal(Ignore, l));
        Assert.Equal(ex.InputIds[promptLen..].Select(i => (long)i), ex.Labels[promptLen..]);

        // A prompt with more tokens than the whole text masks every position (labels keep the ids' length).
        var shortEx = Tokenize(new InstructionRecord("inherit", "", "ed"), new TokenizeOptions(TrainOnInputs: false), template);
        Assert.Equal(BosTextEos("inherited"), shortEx.InputIds);
        Assert.Equal(new[] { Ignore, Ignore, Ignore }, shortEx.Labels);
    }

    [Fact]
    public void LongTextIsCutAtTheCutoffWithoutEos()
    {
        var ex = Tokenize(Ocean, new TokenizeOptions(CutoffLen: 20));
        List<int> expected = [Bos, .. Tok.Encode(PromptTemplate.Alpaca.Full(Ocean))];
        Assert.Equal(expected.Take(20), ex.InputIds);
    }

    [Fact]
    public void EosIsAddedOnlyBelowTheCutoff()
    {
        var record = new InstructionRecord("energy", "", "");
        var template = new PromptTemplate("bare", "", "{instruction}{input}", "{instruction}", "");
        List<int> text = [Bos, .. Tok.Encode("energy")];   // 6 tokens
        Assert.Equal(6, text.Count);

        // Exactly at the cutoff: no room, no EOS.
        Assert.Equal(text, Tokenize(record, new TokenizeOptions(CutoffLen: 6), template).InputIds);
        // One below: EOS appended.
        Assert.Equal([.. text, Eos], Tokenize(record, new TokenizeOptions(CutoffLen: 7), template).InputIds);
        // Turned off: never.
        Assert.Equal(text, Tokenize(record, new TokenizeOptions(CutoffLen: 7, AddEos: false), template).InputIds);
    }

    [Fact]
    public void PromptThatFillsTheCutoffLeavesTheLastLabelAsTheOriginalDoes()
    {
        // The prompt alone has more than 30 tokens: the original counts 30 (no EOS fits) and still subtracts
        // one for EOS, so position 29 keeps its label; without add_eos nothing is subtracted.
        var withEos = Tokenize(Ocean, new TokenizeOptions(CutoffLen: 30, TrainOnInputs: false));
        Assert.Equal(30, withEos.Length);
        Assert.All(withEos.Labels[..29], l => Assert.Equal(Ignore, l));
        Assert.Equal(withEos.InputIds[29], withEos.Labels[29]);

        var noEos = Tokenize(Ocean, new TokenizeOptions(CutoffLen: 30, AddEos: false, TrainOnInputs: false));
        Assert.All(noEos.Labels, l => Assert.Equal(Ignore, l));
    }

    static List<InstructionRecord> Numbered(int n) =>
        Enumerable.Range(0, n).Select(i => new InstructionRecord($"task {i}", "", $"out {i}") { Line = i + 1 }).ToList();

    [Fact]
    public void SplitIsSeededDisjointAndComplete()
    {
        var records = Numbered(40);
        var (train, val) = InstructionDataset.Split(records, 7, seed: 42);
        var (train2, val2) = InstructionDataset.Split(records, 7, seed: 42);
        var (_, val3) = InstructionDataset.Split(records, 7, seed: 43);

        Assert.Equal(7, val.Count);
        Assert.Equal(33, train.Count);
        Assert.Equal(records.OrderBy(r => r.Line), train.Concat(val).OrderBy(r => r.Line));   // disjoint and complete
        Assert.Equal(val, val2);
        Assert.Equal(train, train2);
        Assert.NotEqual(val.Select(r => r.Line), val3.Select(r => r.Line));
        Assert.Equal(val.OrderBy(r => r.Line), val);                                       // file order kept
        Assert.NotEqual(records.Take(7), val);                                              // drawn, not the first ones
    }

    [Fact]
    public void SplitWithoutValidationKeepsEverything()
    {
        var records = Numbered(5);
        var (train, val) = InstructionDataset.Split(records, 0, seed: 1);
        Assert.Equal(records, train);
        Assert.Empty(val);
    }

    [Theory]
    [InlineData(5)]
    [InlineData(6)]
    public void SplitThatLeavesNothingToTrainIsAnError(int valSetSize)
    {
        var e = Assert.Throws<MolaException>(() => InstructionDataset.Split(Numbered(5), valSetSize, seed: 1));
        Assert.Contains("val_set_size", e.Message);   // the library names the setting; the CLI writes --val-set-size
        Assert.Contains("5 records", e.Message);
    }

    [Fact]
    public void PaddingGetsPadIdMaskZeroAndLabelMinus100()
    {
        var records = new List<InstructionRecord> { new("Say hi.", "", "hi"), new("Name the ocean.", "salt", "The answer is B.") };
        var data = InstructionDataset.Create(records, PromptTemplate.Alpaca, Tok, new TokenizeOptions(TrainOnInputs: false));
        int shortLen = data.Examples[0].Length, longLen = data.Examples[1].Length;
        Assert.True(longLen > shortLen);

        using var batch = data.Collate([0, 1], CPU);
        Assert.Equal(new long[] { 2, longLen }, batch.InputIds.shape);
        var ids = batch.InputIds.data<long>().ToArray();
        var mask = batch.AttentionMask.data<long>().ToArray();
        var labels = batch.Labels.data<long>().ToArray();
        for (int t = 0; t < longLen; t++)
        {
            bool real = t < shortLen;
            Assert.Equal(real ? data.Examples[0].InputIds[t] : 0, ids[t]);
            Assert.Equal(real ? 1 : 0, mask[t]);
            Assert.Equal(real ? data.Examples[0].Labels[t] : Ignore, labels[t]);
            Assert.Equal(data.Examples[1].InputIds[t], ids[longLen + t]);
            Assert.Equal(1, mask[longLen + t]);
            Assert.Equal(data.Examples[1].Labels[t], labels[longLen + t]);
        }
    }

    [Fact]
    public void PaddedBatchGivesTheLossOfTheUnpaddedSequences()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var tok = MolaTokenizer.Load(TestUtil.Fixture("llama-tiny"), model.Config.BosTokenId, model.Config.EosTokenId);
        var records = new List<InstructionRecord>
        {
            new("Say hi.", "", "hi"),
            new("Name the ocean.", "", "The answer is B. energy solid as ocean heat"),
            new("Pick one.", "", "ocean south mixture experts score energy solid as ocean heat an inherited acquired"), // cut at 128
        };
        var data = InstructionDataset.Create(records, PromptTemplate.Alpaca, tok, new TokenizeOptions(CutoffLen: 128, TrainOnInputs: false));
        Assert.Equal(128, data.Examples[2].Length);
        Assert.True(data.Examples[0].Length < data.Examples[1].Length);

        using var _ = torch.no_grad();
        using var scope = NewDisposeScope();
        // Unpadded, one sequence at a time; combined as the mean over all predicted tokens.
        double sum = 0;
        long count = 0;
        foreach (var ex in data.Examples)
        {
            var ids = tensor(ex.InputIds.Select(i => (long)i).ToArray(), [1, ex.Length]);
            var loss = Losses.CausalLm(model.Forward(ids), tensor(ex.Labels, [1, ex.Length])).item<float>();
            long predicted = ex.Labels.Skip(1).Count(l => l != Ignore);
            sum += loss * predicted;
            count += predicted;
        }
        var batch = data.Collate([0, 1, 2], CPU);
        double padded = Losses.CausalLm(model.Forward(batch.InputIds, batch.AttentionMask), batch.Labels).item<float>();
        Assert.True(Math.Abs(padded - sum / count) < 1e-5 * (sum / count), $"padded {padded} vs unpadded {sum / count}");
    }
}
