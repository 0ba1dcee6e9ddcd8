using Microsoft.ML.Tokenizers;

namespace Mola.Tokenization;

/// <summary>A SentencePiece <c>tokenizer.model</c> (LLaMA-style BPE with byte fallback) through
/// Microsoft.ML.Tokenizers, with BOS/EOS ids from the model's config.</summary>
public sealed class MolaTokenizer
{
    readonly LlamaTokenizer _tok;

    public int BosId { get; }
    public int EosId { get; }
    public int VocabSize => _tok.Vocabulary.Count;

    MolaTokenizer(LlamaTokenizer tok, int bos, int eos)
    {
        _tok = tok;
        BosId = bos;
        EosId = eos;
    }

    /// <summary>Loads <c>tokenizer.model</c> from a model directory (or the file itself).</summary>
    /// <param name="vocabSize">The model's vocab_size: a tokenizer with more pieces would produce ids the embedding
    /// table does not have, so it is refused here rather than failing inside libtorch.</param>
    public static MolaTokenizer Load(string path, int? bosId = null, int? eosId = null, int? vocabSize = null)
    {
        string file = Directory.Exists(path) ? Path.Combine(path, "tokenizer.model") : path;
        if (!File.Exists(file))
            throw new MolaException($"{file}: not found (the base model directory needs a SentencePiece tokenizer.model)");
        LlamaTokenizer tok;
        try
        {
            using var stream = File.OpenRead(file);
            tok = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception e) when (e is not MolaException)
        {
            // The reader's own messages (a null reference on a truncated file) say nothing useful to a user.
            throw new MolaException($"{file}: not a readable SentencePiece model (damaged, truncated or another format)");
        }
        if (vocabSize is int v && tok.Vocabulary.Count > v)
            throw new MolaException($"{file}: {tok.Vocabulary.Count} pieces, but the model's vocab_size is {v} (a tokenizer from another model?)");
        return new MolaTokenizer(tok, bosId ?? tok.BeginningOfSentenceId, eosId ?? tok.EndOfSentenceId);
    }

    /// <summary>Token ids of <paramref name="text"/>, optionally with BOS first and EOS last.</summary>
    public List<int> Encode(string text, bool bos = false, bool eos = false)
    {
        var ids = new List<int>();
        if (bos) ids.Add(BosId);
        if (text.Length > 0)
            ids.AddRange(_tok.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false));
        if (eos) ids.Add(EosId);
        return ids;
    }

    /// <summary>Text of <paramref name="ids"/>; BOS, EOS and other control tokens are dropped.</summary>
    public string Decode(IEnumerable<int> ids) => _tok.Decode(ids, considerSpecialTokens: false);
}
