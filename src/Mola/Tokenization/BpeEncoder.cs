using System.Collections.Concurrent;
using System.Text;

namespace Mola.Tokenization;

/// <summary>SentencePiece's BPE encoding and decoding, step for step (src/normalizer.cc, src/bpe_model.cc,
/// src/sentencepiece_processor.cc of SentencePiece 0.1.97): identity normalisation with its whitespace
/// options, merges by score with ties going to the leftmost pair, frozen user-defined pieces, unused pieces
/// split again, byte fallback. With a tokenizer.json the same algorithm runs on its merge ranks.</summary>
/// <remarks>Microsoft.ML.Tokenizers breaks score ties towards the rightmost pair, which changes the ids of
/// every run of one repeated character; hence an encoder of our own.</remarks>
sealed class BpeEncoder
{
    const char Space = '\u2581';
    // Words longer than this are rare and cost more to hash than to cache.
    const int MaxCachedLength = 64;
    const int MaxCacheEntries = 100_000;

    readonly Vocabulary _v;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _pieces;   // what a merge may form
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _reserved; // control, unknown, byte
    readonly Dictionary<char, string[]> _userDefined = [];                          // by first char, longest first
    readonly int _unkId;
    readonly int[] _byteIds = new int[256];
    readonly int[] _byteValue;
    readonly bool _hasUnused;
    // True when no piece spans "x▁" (x not ▁): then the text splits before such a ▁ into words that encode
    // independently (no merge can cross), and each word's ids can be cached.
    readonly bool _byWord;
    readonly ConcurrentDictionary<string, int[]> _cache = new();
    readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;
    int _cacheCount;

    [ThreadStatic] static Scratch? t_scratch;

    public BpeEncoder(Vocabulary v, string file)
    {
        _v = v;
        var pieces = new Dictionary<string, int>(StringComparer.Ordinal);
        var reserved = new Dictionary<string, int>(StringComparer.Ordinal);
        var user = new List<string>();
        _byteValue = new int[v.Pieces.Length];
        _unkId = -1;
        Array.Fill(_byteIds, -1);
        for (int i = 0; i < v.Pieces.Length; i++)
        {
            string p = v.Pieces[i];
            PieceType t = v.Types[i];
            _byteValue[i] = -1;
            if (p.Length == 0)
                throw new MolaException($"{file}: piece {i} is empty");
            bool normal = t is PieceType.Normal or PieceType.UserDefined or PieceType.Unused;
            // SentencePiece checks each kind's table alone; a piece in both would make ids ambiguous.
            if (pieces.ContainsKey(p) || reserved.ContainsKey(p))
                throw new MolaException($"{file}: piece '{p}' (id {i}) is defined twice");
            (normal ? pieces : reserved)[p] = i;
            if (t == PieceType.UserDefined) user.Add(p);
            if (t == PieceType.Unused) _hasUnused = true;
            if (t == PieceType.Unknown)
            {
                if (_unkId >= 0)
                    throw new MolaException($"{file}: two unknown pieces (ids {_unkId} and {i}); expected one");
                _unkId = i;
            }
            if (t == PieceType.Byte)
            {
                if (!v.ByteFallback)
                    throw new MolaException($"{file}: byte piece '{p.ReplaceLineEndings("\\n")}' (id {i}) in a model without byte fallback");
                int b = ByteOfPiece(p);
                if (b < 0)
                    throw new MolaException($"{file}: byte piece '{p.ReplaceLineEndings("\\n")}' (id {i}) is not of the form <0xXX>");
                _byteIds[b] = i;
                _byteValue[i] = b;
            }
        }
        if (_unkId < 0)
            throw new MolaException($"{file}: no unknown piece (<unk>); every SentencePiece model has one");
        if (v.ByteFallback && Array.IndexOf(_byteIds, -1) is int missing and >= 0)
            throw new MolaException($"{file}: byte fallback is on but the byte piece <0x{missing:X2}> is missing (expected all 256)");
        foreach (var g in user.GroupBy(u => u[0]))
            _userDefined[g.Key] = [.. g.OrderByDescending(u => u.Length)];
        _byWord = !_hasUnused && !pieces.Keys.Any(SpansAWordBoundary);
        _pieces = pieces.GetAlternateLookup<ReadOnlySpan<char>>();
        _reserved = reserved.GetAlternateLookup<ReadOnlySpan<char>>();
        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    public int Count => _v.Pieces.Length;

    /// <summary>The piece of <paramref name="id"/> as the vocabulary spells it (<c>&lt;s&gt;</c> for BOS).</summary>
    public string Piece(int id) => _v.Pieces[id];

    static bool SpansAWordBoundary(string piece)
    {
        for (int k = 1; k < piece.Length; k++)
            if (piece[k] == Space && piece[k - 1] != Space) return true;
        return false;
    }

    /// <summary>The byte of a byte piece, which SentencePiece writes exactly as "&lt;0x%02X&gt;"; -1 for any other piece.</summary>
    internal static int ByteOfPiece(string p) =>
        p.Length == 6 && p.StartsWith("<0x", StringComparison.Ordinal) && p[5] == '>' && p[3..5].All(char.IsAsciiHexDigitUpper)
            ? Convert.ToInt32(p[3..5], 16) : -1;

    /// <summary>The ids of <paramref name="text"/>, as SentencePiece's <c>encode</c> gives them.</summary>
    public void Encode(string text, List<int> ids)
    {
        string norm = Normalize(text);
        int first = ids.Count;
        if (!_byWord)
            EncodeWord(norm.AsSpan(), ids);
        else
        {
            int start = 0;
            for (int i = 1; i <= norm.Length; i++)
            {
                if (i < norm.Length && !(norm[i] == Space && norm[i - 1] != Space)) continue;
                EncodeCached(norm.AsSpan(start, i - start), ids);
                start = i;
            }
        }
        if (_v.FuseUnknown && !_v.ByteFallback)
            FuseUnknown(ids, first);
    }

    void EncodeCached(ReadOnlySpan<char> word, List<int> ids)
    {
        if (word.Length > MaxCachedLength)
        {
            EncodeWord(word, ids);
            return;
        }
        if (!_cacheLookup.TryGetValue(word, out int[]? cached))
        {
            int before = ids.Count;
            EncodeWord(word, ids);
            cached = [.. ids.GetRange(before, ids.Count - before)];
            // A bounded cache: data preparation streams through millions of words.
            if (Interlocked.Increment(ref _cacheCount) > MaxCacheEntries)
            {
                _cache.Clear();
                _cacheCount = 0;
            }
            _cacheLookup.TryAdd(word, cached);
            return;
        }
        ids.AddRange(cached);
    }

    // SentencePiece keeps a run of unknown pieces as one unknown (only without byte fallback can one remain).
    void FuseUnknown(List<int> ids, int first)
    {
        int w = first;
        for (int r = first; r < ids.Count; r++)
            if (!(ids[r] == _unkId && w > first && ids[w - 1] == _unkId))
                ids[w++] = ids[r];
        ids.RemoveRange(w, ids.Count - w);
    }

    /// <summary>SentencePiece's identity normaliser: optional removal of leading, trailing and repeated
    /// spaces, the dummy prefix, and spaces escaped to ▁. User-defined pieces pass through as one unit.</summary>
    string Normalize(string text)
    {
        bool remove = _v.RemoveExtraWhitespaces;
        int i = 0;
        if (remove)
            while (i < text.Length && text[i] == ' ') i++;
        if (i == text.Length) return "";
        var sb = new StringBuilder(text.Length + 1);
        if (_v.AddDummyPrefix && !(_v.PrefixUnlessLeadingSpace && text[i] is ' ' or Space)) sb.Append(Space);
        bool prevSpace = remove;
        while (i < text.Length)
        {
            int user = MatchUserDefined(text.AsSpan(i));
            if (user > 0)
            {
                int s = i, e = i + user;
                while (prevSpace && s < e && text[s] == ' ') s++;
                if (s < e)
                {
                    for (int k = s; k < e; k++) sb.Append(text[k] == ' ' ? Space : text[k]);
                    prevSpace = text[e - 1] == ' ';
                }
                i = e;
            }
            else
            {
                char c = text[i];
                if (c == ' ')
                {
                    if (!prevSpace) sb.Append(Space);
                    prevSpace = true;
                    i++;
                }
                else if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                {
                    sb.Append(c).Append(text[i + 1]);
                    prevSpace = false;
                    i += 2;
                }
                else
                {
                    // A lone surrogate has no UTF-8 form; SentencePiece reads malformed input as U+FFFD.
                    sb.Append(char.IsSurrogate(c) ? '\uFFFD' : c);
                    prevSpace = false;
                    i++;
                }
            }
            if (!remove) prevSpace = false;
        }
        if (remove)
            while (sb.Length > 0 && sb[^1] == Space) sb.Length--;
        return sb.ToString();
    }

    int MatchUserDefined(ReadOnlySpan<char> s)
    {
        if (_userDefined.Count == 0 || !_userDefined.TryGetValue(s[0], out var candidates)) return 0;
        foreach (string u in candidates)
            if (s.StartsWith(u, StringComparison.Ordinal)) return u.Length;
        return 0;
    }

    struct Symbol
    {
        public int Start, Length, Prev, Next, Id;
        public bool Freeze;
    }

    readonly record struct Candidate(int Left, int Right, int Length, int Id);

    /// <summary>Higher score first; among equal scores the leftmost pair, as SentencePiece's agenda orders them.</summary>
    sealed class Priority : IComparer<(float Score, int Left)>
    {
        public static readonly Priority Instance = new();
        public int Compare((float Score, int Left) a, (float Score, int Left) b) =>
            a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left);
    }

    sealed class Scratch
    {
        public Symbol[] Symbols = new Symbol[256];
        public readonly PriorityQueue<Candidate, (float, int)> Agenda = new(Priority.Instance);
        public readonly Dictionary<string, (string, string)> Splits = [];
    }

    /// <summary>bpe::Model::SampleEncode without dropout, then byte fallback as the processor applies it.</summary>
    void EncodeWord(ReadOnlySpan<char> word, List<int> ids)
    {
        if (word.IsEmpty) return;
        var scratch = t_scratch ??= new Scratch();
        if (scratch.Symbols.Length < word.Length) scratch.Symbols = new Symbol[word.Length * 2];
        var symbols = scratch.Symbols;
        var agenda = scratch.Agenda;
        var splits = scratch.Splits;
        agenda.Clear();
        splits.Clear();

        int n = 0;
        for (int pos = 0; pos < word.Length; n++)
        {
            int length = MatchUserDefined(word[pos..]);
            bool freeze = length > 0;
            if (!freeze)
                length = char.IsHighSurrogate(word[pos]) && pos + 1 < word.Length && char.IsLowSurrogate(word[pos + 1]) ? 2 : 1;
            int id = _pieces.TryGetValue(word.Slice(pos, length), out int found) ? found : -1;
            symbols[n] = new Symbol { Start = pos, Length = length, Prev = n - 1, Next = pos + length < word.Length ? n + 1 : -1, Id = id, Freeze = freeze };
            pos += length;
        }
        for (int i = 1; i < n; i++)
            AddPair(word, symbols, agenda, splits, i - 1, i);

        while (agenda.TryDequeue(out var top, out _))
        {
            ref var left = ref symbols[top.Left];
            ref var right = ref symbols[top.Right];
            // Stale: one side was merged away or grew since this pair was queued.
            if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != top.Length) continue;
            left.Length += right.Length;
            left.Id = top.Id;
            left.Next = right.Next;
            if (right.Next >= 0) symbols[right.Next].Prev = top.Left;
            right.Length = 0;
            AddPair(word, symbols, agenda, splits, left.Prev, top.Left);
            AddPair(word, symbols, agenda, splits, top.Left, left.Next);
        }

        for (int i = 0; i != -1; i = symbols[i].Next)
            Emit(word.Slice(symbols[i].Start, symbols[i].Length), symbols[i].Id, splits, ids);
    }

    void AddPair(ReadOnlySpan<char> word, Symbol[] symbols, PriorityQueue<Candidate, (float, int)> agenda,
        Dictionary<string, (string, string)> splits, int left, int right)
    {
        if (left < 0 || right < 0 || symbols[left].Freeze || symbols[right].Freeze) return;
        ref var a = ref symbols[left];
        ref var b = ref symbols[right];
        float score;
        int id;
        if (_v.Merges is { } merges)
        {
            if (a.Id < 0 || b.Id < 0 || !merges.TryGetValue((a.Id, b.Id), out var merge)) return;
            (score, id) = (-merge.Rank, merge.Id);
        }
        else
        {
            if (!_pieces.TryGetValue(word.Slice(a.Start, a.Length + b.Length), out id)) return;
            score = _v.Scores[id];
        }
        agenda.Enqueue(new Candidate(left, right, a.Length + b.Length, id), (score, left));
        // SentencePiece remembers the last split that formed an unused piece, to undo the merge at the end.
        if (_v.Types[id] == PieceType.Unused)
            splits[word.Slice(a.Start, a.Length + b.Length).ToString()] =
                (word.Slice(a.Start, a.Length).ToString(), word.Slice(b.Start, b.Length).ToString());
    }

    void Emit(ReadOnlySpan<char> piece, int id, Dictionary<string, (string, string)> splits, List<int> ids)
    {
        if (id < 0)
            id = _reserved.TryGetValue(piece, out int r) ? r : _unkId;
        if (_v.Types[id] == PieceType.Unused && splits.TryGetValue(piece.ToString(), out var split))
        {
            Emit(split.Item1, _pieces.TryGetValue(split.Item1, out int l) ? l : -1, splits, ids);
            Emit(split.Item2, _pieces.TryGetValue(split.Item2, out int q) ? q : -1, splits, ids);
        }
        else if (id == _unkId && _v.ByteFallback)
        {
            Span<byte> utf8 = stackalloc byte[piece.Length * 3];
            int count = Encoding.UTF8.GetBytes(piece, utf8);
            foreach (byte b in utf8[..count]) ids.Add(_byteIds[b]);
        }
        else
            ids.Add(id);
    }

    /// <summary>Text of <paramref name="ids"/> as SentencePiece decodes it: control pieces vanish, byte pieces
    /// join into UTF-8 (each malformed byte one U+FFFD), ▁ becomes a space, the dummy prefix's space is dropped.
    /// Ids outside the vocabulary (a model's embedding may be larger) give no text.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var text = new StringBuilder();
        var bytes = new List<byte>();
        bool atStart = true, startSpaceSeen = false;
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_v.Pieces.Length) continue;
            if (_v.Types[id] == PieceType.Byte)
            {
                bytes.Add((byte)_byteValue[id]);
                continue;
            }
            AppendBytes(bytes, text);
            if (startSpaceSeen || text.Length > 0) atStart = false;
            startSpaceSeen = false;
            switch (_v.Types[id])
            {
                case PieceType.Control: break;
                case PieceType.Unknown: text.Append(_v.UnknownSurface); break;
                default:
                    string piece = _v.Pieces[id];
                    if (atStart && (_v.AddDummyPrefix || _v.RemoveExtraWhitespaces) && piece[0] == Space)
                    {
                        piece = piece[1..];
                        // With extra whitespace removed, every leading space of the text goes.
                        startSpaceSeen = !_v.RemoveExtraWhitespaces;
                    }
                    text.Append(piece.Replace(Space, ' '));
                    break;
            }
        }
        AppendBytes(bytes, text);
        return text.ToString();
    }

    /// <summary>string_util::DecodeUTF8's rules: a valid sequence is one character, anything else one U+FFFD per byte.</summary>
    static void AppendBytes(List<byte> bytes, StringBuilder text)
    {
        int i = 0;
        while (i < bytes.Count)
        {
            int b0 = bytes[i], need, cp, min;
            if (b0 < 0x80) { text.Append((char)b0); i++; continue; }
            if ((b0 & 0xE0) == 0xC0) (need, cp, min) = (1, b0 & 0x1F, 0x80);
            else if ((b0 & 0xF0) == 0xE0) (need, cp, min) = (2, b0 & 0x0F, 0x800);
            else if ((b0 & 0xF8) == 0xF0) (need, cp, min) = (3, b0 & 0x07, 0x10000);
            else (need, cp, min) = (-1, 0, 0);
            bool ok = need > 0;
            if (ok)
            {
                for (int k = 1; k <= need && ok; k++)
                {
                    if (i + k >= bytes.Count || (bytes[i + k] & 0xC0) != 0x80) ok = false;
                    else cp = (cp << 6) | (bytes[i + k] & 0x3F);
                }
                ok = ok && cp >= min && (cp < 0xD800 || cp >= 0xE000 && cp <= 0x10FFFF);
            }
            if (ok)
            {
                text.Append(char.ConvertFromUtf32(cp));
                i += need + 1;
            }
            else
            {
                text.Append('\uFFFD');
                i++;
            }
        }
        bytes.Clear();
    }
}
