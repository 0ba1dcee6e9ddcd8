namespace Mola.Tokenization;

/// <summary>The base model's tokenizer: a SentencePiece <c>tokenizer.model</c> (BPE), or where a model directory
/// has none, a Hugging Face <c>tokenizer.json</c> of the Llama/Mistral kind. Encodes exactly as SentencePiece
/// does (<see cref="BpeEncoder"/>), with BOS/EOS ids from the model's config.</summary>
public sealed class MolaTokenizer
{
    readonly BpeEncoder _encoder;

    public int BosId { get; }
    public int EosId { get; }
    public int VocabSize => _encoder.Count;
    /// <summary>The file the tokenizer was read from.</summary>
    public string Source { get; }

    MolaTokenizer(BpeEncoder encoder, string file, int bos, int eos)
    {
        _encoder = encoder;
        Source = file;
        BosId = bos;
        EosId = eos;
    }

    /// <summary>Loads <c>tokenizer.model</c> from a model directory (else its <c>tokenizer.json</c>), or the
    /// file itself (a name ending in .json is read as tokenizer.json).</summary>
    /// <param name="vocabSize">The model's vocab_size: a tokenizer with more pieces would produce ids the embedding
    /// table does not have, so it is refused here rather than failing inside libtorch.</param>
    public static MolaTokenizer Load(string path, int? bosId = null, int? eosId = null, int? vocabSize = null)
    {
        string file = path;
        if (Directory.Exists(path))
        {
            file = Path.Combine(path, "tokenizer.model");
            string json = Path.Combine(path, "tokenizer.json");
            if (!File.Exists(file) && File.Exists(json)) file = json;
        }
        if (!File.Exists(file))
            throw new MolaException($"{file}: not found (the base model directory needs a SentencePiece tokenizer.model or a tokenizer.json)");
        var vocabulary = file.EndsWith(".json", StringComparison.OrdinalIgnoreCase)
            ? TokenizerJsonFile.Read(file) : SentencePieceModelFile.Read(file);
        var encoder = new BpeEncoder(vocabulary, file);
        if (vocabSize is int v && encoder.Count > v)
            throw new MolaException($"{file}: {encoder.Count} pieces, but the model's vocab_size is {v} (a tokenizer from another model?)");
        int bos = bosId ?? vocabulary.BosId ?? throw new MolaException($"{file}: no BOS piece (<s>); give bos_token_id in config.json");
        int eos = eosId ?? vocabulary.EosId ?? throw new MolaException($"{file}: no EOS piece (</s>); give eos_token_id in config.json");
        return new MolaTokenizer(encoder, file, bos, eos);
    }

    /// <summary>Token ids of <paramref name="text"/>, optionally with BOS first and EOS last.</summary>
    public List<int> Encode(string text, bool bos = false, bool eos = false)
    {
        var ids = new List<int>(text.Length / 3 + 2);
        if (bos) ids.Add(BosId);
        _encoder.Encode(text, ids);
        if (eos) ids.Add(EosId);
        return ids;
    }

    /// <summary>The piece of a token id as the vocabulary spells it (BOS: <c>&lt;s&gt;</c>), what a chat template writes for it.</summary>
    public string Piece(int id) => id >= 0 && id < _encoder.Count ? _encoder.Piece(id) : throw new MolaException($"{Source}: no token id {id} (the tokenizer has {_encoder.Count})");

    /// <summary>Text of <paramref name="ids"/> as SentencePiece decodes it; BOS, EOS and other control tokens
    /// are dropped.</summary>
    public string Decode(IEnumerable<int> ids) => _encoder.Decode(ids);
}
