using System.Buffers.Binary;
using System.Text;

namespace Mola.Tokenization;

/// <summary>Reads a SentencePiece <c>tokenizer.model</c> (a <c>ModelProto</c> message) into a
/// <see cref="Vocabulary"/>. Only what the BPE encoder uses is read; whatever would make it encode differently
/// from SentencePiece (another model type, a normalisation table) is refused by name.</summary>
static class SentencePieceModelFile
{
    const int BpeModelType = 2;

    sealed class Spec
    {
        public List<(string Piece, float Score, int Type)> Pieces { get; } = [];
        public bool HasTrainer, HasNormalizer;
        public int ModelType = 1; // UNIGRAM, the proto's default
        public bool ByteFallback, WhitespaceAsSuffix;
        public int BosId = 1, EosId = 2;
        public string UnknownSurface = " \u2047 ";
        public string NormalizerName = "";
        public int CharsMapLength, DenormalizerCharsMapLength;
        public bool AddDummyPrefix = true, RemoveExtraWhitespaces = true, EscapeWhitespaces = true;
    }

    public static Vocabulary Read(string file)
    {
        byte[] data = InputFile.ReadAllBytes(file);
        Spec spec;
        try
        {
            spec = Parse(data);
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentOutOfRangeException or FormatException or OverflowException)
        {
            spec = new Spec(); // reported below as not readable
        }
        // A cut-off file parses up to the cut; without both specs (written after the pieces) it is not whole.
        if (!spec.HasTrainer || !spec.HasNormalizer || spec.Pieces.Count == 0)
            throw new MolaException($"{file}: not a readable SentencePiece model (damaged, truncated or another format)");
        string? refused =
            spec.ModelType != BpeModelType ? $"model type {ModelTypeName(spec.ModelType)}; only BPE models (LLaMA-2, Mistral, Gemma v1) are supported"
            : spec.CharsMapLength > 0 ? $"normalizer '{spec.NormalizerName}' (a precompiled character map); only the identity normalizer is supported"
            : spec.DenormalizerCharsMapLength > 0 ? "a denormalizer; decoding with one is not supported"
            : spec.WhitespaceAsSuffix ? "treat_whitespace_as_suffix; only whitespace as a prefix is supported"
            : !spec.EscapeWhitespaces ? "escape_whitespaces false; only whitespace escaped to \u2581 is supported"
            : null;
        if (refused != null)
            throw new MolaException($"{file}: {refused}");

        int n = spec.Pieces.Count;
        var pieces = new string[n];
        var types = new PieceType[n];
        var scores = new float[n];
        for (int i = 0; i < n; i++)
        {
            (pieces[i], scores[i], int type) = spec.Pieces[i];
            if (type is < 1 or > 6)
                throw new MolaException($"{file}: piece {i} has unknown type {type}");
            types[i] = (PieceType)type;
        }
        return new Vocabulary
        {
            Pieces = pieces,
            Types = types,
            Scores = scores,
            ByteFallback = spec.ByteFallback,
            AddDummyPrefix = spec.AddDummyPrefix,
            RemoveExtraWhitespaces = spec.RemoveExtraWhitespaces,
            UnknownSurface = spec.UnknownSurface,
            BosId = spec.BosId >= 0 && spec.BosId < n ? spec.BosId : null,
            EosId = spec.EosId >= 0 && spec.EosId < n ? spec.EosId : null,
        };
    }

    static string ModelTypeName(int t) => t switch { 1 => "UNIGRAM", 3 => "WORD", 4 => "CHAR", _ => t.ToString() };

    static Spec Parse(ReadOnlySpan<byte> data)
    {
        var spec = new Spec();
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) spec.Pieces.Add(ParsePiece(r.Bytes()));
            else if (field == 2 && wire == 2) { ParseTrainer(r.Bytes(), spec); spec.HasTrainer = true; }
            else if (field == 3 && wire == 2) { ParseNormalizer(r.Bytes(), spec, denormalizer: false); spec.HasNormalizer = true; }
            else if (field == 5 && wire == 2) ParseNormalizer(r.Bytes(), spec, denormalizer: true);
            else r.Skip(wire);
        }
        return spec;
    }

    static (string, float, int) ParsePiece(ReadOnlySpan<byte> data)
    {
        string piece = "";
        float score = 0;
        int type = 1;
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) piece = Encoding.UTF8.GetString(r.Bytes());
            else if (field == 2 && wire == 5) score = r.Float();
            else if (field == 3 && wire == 0) type = (int)r.Varint();
            else r.Skip(wire);
        }
        return (piece, score, type);
    }

    static void ParseTrainer(ReadOnlySpan<byte> data, Spec spec)
    {
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (wire == 0 && field is 3 or 24 or 35 or 41 or 42)
            {
                long v = (long)r.Varint();
                switch (field)
                {
                    case 3: spec.ModelType = (int)v; break;
                    case 24: spec.WhitespaceAsSuffix = v != 0; break;
                    case 35: spec.ByteFallback = v != 0; break;
                    case 41: spec.BosId = (int)v; break;
                    case 42: spec.EosId = (int)v; break;
                }
            }
            else if (field == 44 && wire == 2) spec.UnknownSurface = Encoding.UTF8.GetString(r.Bytes());
            else r.Skip(wire);
        }
    }

    static void ParseNormalizer(ReadOnlySpan<byte> data, Spec spec, bool denormalizer)
    {
        var r = new ProtoReader(data);
        while (r.Next(out int field, out int wire))
        {
            if (field == 2 && wire == 2)
            {
                int length = r.Bytes().Length;
                if (denormalizer) spec.DenormalizerCharsMapLength = length;
                else spec.CharsMapLength = length;
            }
            else if (!denormalizer && field == 1 && wire == 2) spec.NormalizerName = Encoding.UTF8.GetString(r.Bytes());
            else if (!denormalizer && wire == 0 && field is 3 or 4 or 5)
            {
                bool v = r.Varint() != 0;
                if (field == 3) spec.AddDummyPrefix = v;
                else if (field == 4) spec.RemoveExtraWhitespaces = v;
                else spec.EscapeWhitespaces = v;
            }
            else r.Skip(wire);
        }
    }

    /// <summary>The protobuf wire format, just enough of it: varints, 32/64-bit values, length-delimited fields.</summary>
    ref struct ProtoReader(ReadOnlySpan<byte> data)
    {
        readonly ReadOnlySpan<byte> _data = data;
        int _pos;

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_pos >= _data.Length) return false;
            ulong key = Varint();
            field = checked((int)(key >> 3));
            wire = (int)(key & 7);
            return true;
        }

        public ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                byte b = _data[_pos++];
                v |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return v;
            }
            throw new FormatException("varint too long");
        }

        public float Float()
        {
            float v = BinaryPrimitives.ReadSingleLittleEndian(_data.Slice(_pos, 4));
            _pos += 4;
            return v;
        }

        public ReadOnlySpan<byte> Bytes()
        {
            int length = checked((int)Varint());
            var s = _data.Slice(_pos, length);
            _pos += length;
            return s;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: _pos = checked(_pos + 8); break;
                case 2: Bytes(); break;
                case 5: _pos = checked(_pos + 4); break;
                default: throw new FormatException($"wire type {wire}");
            }
            if (_pos > _data.Length) throw new FormatException("past the end");
        }
    }
}
