namespace Mola.Tokenization;

/// <summary>SentencePiece's piece kinds (the numbers of <c>sentencepiece_model.proto</c>).</summary>
enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

/// <summary>What an encoder needs from a tokenizer file, whichever format it came in: the pieces with their
/// kinds and merge priorities, and the normaliser's options.</summary>
sealed class Vocabulary
{
    public required string[] Pieces { get; init; }
    public required PieceType[] Types { get; init; }
    /// <summary>SentencePiece's piece scores: a merge forming a higher-scored piece goes first.</summary>
    public required float[] Scores { get; init; }
    /// <summary>tokenizer.json only: the allowed merges as (left id, right id) -> (rank, merged id); null for a
    /// SentencePiece model, where any two neighbours whose concatenation is a piece may merge.</summary>
    public Dictionary<(int Left, int Right), (int Rank, int Id)>? Merges { get; init; }
    public required bool ByteFallback { get; init; }
    public required bool AddDummyPrefix { get; init; }
    public required bool RemoveExtraWhitespaces { get; init; }
    /// <summary>tokenizer.json's Metaspace: no ▁ is put before a text that already starts with a space.</summary>
    public bool PrefixUnlessLeadingSpace { get; init; }
    /// <summary>Consecutive unknown pieces become one unknown id (SentencePiece always; tokenizer.json's fuse_unk).</summary>
    public bool FuseUnknown { get; init; } = true;
    public string UnknownSurface { get; init; } = " \u2047 ";
    public int? BosId { get; init; }
    public int? EosId { get; init; }
}
