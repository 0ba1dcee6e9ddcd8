using Mola.Models;
using Mola.Tokenization;
using static TorchSharp.torch;

namespace Mola.Data;

/// <summary>How records become token sequences; the defaults are MoLA's (<c>mola_training.py</c>).</summary>
/// <param name="CutoffLen">Most tokens per example, BOS and EOS included.</param>
/// <param name="AddEos">Append EOS to an example that was not cut.</param>
/// <param name="TrainOnInputs">When false, the prompt's positions get label -100 and only the output is learned.</param>
public sealed record TokenizeOptions(int CutoffLen = 256, bool AddEos = true, bool TrainOnInputs = true);

/// <summary>One tokenized example: ids (BOS first) and labels of the same length, -100 where no loss is taken.</summary>
public sealed record TokenizedExample(int[] InputIds, long[] Labels)
{
    public int Length => InputIds.Length;
}

/// <summary>
/// Instruction records tokenized for causal-LM training, exactly as alpaca-lora's and MoLA's
/// <c>generate_and_tokenize_prompt</c> does it, with a seeded train/validation split and padded
/// micro-batches. <see cref="BatchSampler"/> says which examples go in which micro-batch.
/// </summary>
public sealed class InstructionDataset
{
    public IReadOnlyList<InstructionRecord> Records { get; }
    public IReadOnlyList<TokenizedExample> Examples { get; }
    public TokenizeOptions Options { get; }
    public int Count => Examples.Count;

    /// <summary>Token count of every example (what <see cref="BatchSampler"/> groups by).</summary>
    public int[] Lengths => Examples.Select(e => e.Length).ToArray();

    InstructionDataset(IReadOnlyList<InstructionRecord> records, IReadOnlyList<TokenizedExample> examples, TokenizeOptions options)
    {
        Records = records;
        Examples = examples;
        Options = options;
    }

    public static InstructionDataset Create(IReadOnlyList<InstructionRecord> records, PromptTemplate template, MolaTokenizer tokenizer, TokenizeOptions options)
    {
        if (options.CutoffLen < 2) throw new MolaException(n => $"{n("cutoff_len")} must be at least 2 (BOS and one token), got {options.CutoffLen}");
        var examples = records.Select(r => Tokenize(r, template, tokenizer, options)).ToList();
        return new InstructionDataset(records, examples, options);
    }

    /// <summary>
    /// alpaca-lora's <c>tokenize</c>: BOS and the text's tokens, cut to <paramref name="cutoffLen"/>;
    /// then, when <paramref name="addEos"/>, EOS appended unless the sequence was cut (or is exactly
    /// <paramref name="cutoffLen"/> long) or already ends with EOS.
    /// </summary>
    public static List<int> TokenizeText(string text, MolaTokenizer tokenizer, int cutoffLen, bool addEos)
    {
        var ids = tokenizer.Encode(text, bos: true);
        if (ids.Count > cutoffLen) ids.RemoveRange(cutoffLen, ids.Count - cutoffLen);
        if (addEos && ids.Count < cutoffLen && ids[^1] != tokenizer.EosId) ids.Add(tokenizer.EosId);
        return ids;
    }

    /// <summary>alpaca-lora's <c>generate_and_tokenize_prompt</c>: the full text (prompt + output) is the
    /// sequence and, by default, its own labels.</summary>
    public static TokenizedExample Tokenize(InstructionRecord record, PromptTemplate template, MolaTokenizer tokenizer, TokenizeOptions options)
    {
        // Here AddEos governs the full text, as its name says. (In the original the full text always gets
        // EOS, because add_eos_token is passed only when tokenizing the prompt; with the default, true, the two agree.)
        var ids = TokenizeText(template.Full(record), tokenizer, options.CutoffLen, options.AddEos);
        var labels = ids.Select(id => (long)id).ToArray();
        if (!options.TrainOnInputs)
        {
            // The original tokenizes the prompt alone the same way, EOS included when add_eos_token, and masks
            // as many leading positions as that gives, less one for the EOS. Kept as is, with what follows from it:
            // * a count of tokens is masked, not the prompt's tokens: SentencePiece may merge text across the
            //   boundary of prompt and output, so the prompt's tokens need not be a prefix of the full text's,
            //   and the mask can then end one token early or late;
            // * a prompt that alone reaches the cutoff gets no EOS yet still loses one, so the last position keeps its label.
            int promptLen = TokenizeText(template.Prompt(record.Instruction, record.Input), tokenizer, options.CutoffLen, options.AddEos).Count;
            if (options.AddEos) promptLen--;
            // The original would make the labels longer than the ids if the prompt had more tokens than the full text.
            for (int t = 0; t < Math.Min(promptLen, labels.Length); t++) labels[t] = Losses.IgnoreIndex;
        }
        return new TokenizedExample(ids.ToArray(), labels);
    }

    /// <summary>The examples at <paramref name="indices"/>, right-padded to the longest: pad id
    /// <paramref name="padId"/> (0: LLaMA's unk, Gemma's pad, never EOS), attention mask 0 and label -100
    /// on padding, so padding changes neither attention nor loss.</summary>
    public Batch Collate(IReadOnlyList<int> indices, Device device, int padId = 0) =>
        Collate(indices.Select(i => Examples[i]).ToList(), device, padId);

    public static Batch Collate(IReadOnlyList<TokenizedExample> examples, Device device, int padId = 0)
    {
        if (examples.Count == 0) throw new ArgumentException("a batch needs at least one example", nameof(examples));
        return Batching.PadRight(examples.Select(e => e.InputIds).ToList(), padId, device, examples.Select(e => e.Labels).ToList());
    }

    /// <summary>
    /// Puts <paramref name="valSetSize"/> records, drawn by a seeded permutation, aside for validation
    /// (both parts keep file order). Deterministic for a seed and independent of <see cref="BatchSampler"/>'s epochs.
    /// </summary>
    public static (List<InstructionRecord> Train, List<InstructionRecord> Validation) Split(IReadOnlyList<InstructionRecord> records, int valSetSize, int seed)
    {
        if (valSetSize < 0) throw new MolaException(n => $"{n("val_set_size")} must not be negative, got {valSetSize}");
        if (valSetSize >= records.Count)
            throw new MolaException(n => $"{n("val_set_size")} {valSetSize} leaves nothing to train on: the data has {records.Count} record{(records.Count == 1 ? "" : "s")}");
        var validation = new HashSet<int>(SeededPermutation.Of(records.Count, seed, SeededPermutation.SplitStream).Take(valSetSize));
        var train = new List<InstructionRecord>();
        var val = new List<InstructionRecord>();
        for (int i = 0; i < records.Count; i++)
            (validation.Contains(i) ? val : train).Add(records[i]);
        return (train, val);
    }
}
