using System.Text.Json;

namespace Mola.Tokenization;

/// <summary>Reads a Hugging Face fast-tokenizer file (<c>tokenizer.json</c>) of the Llama/Mistral kind into a
/// <see cref="Vocabulary"/>: a BPE model (vocab and ranked merges, optional byte fallback) whose spaces become
/// ▁ either by the normalizer (Prepend "▁" + Replace " " -> "▁") or by a Metaspace pre-tokenizer that does
/// not split. Any other normalizer or pre-tokenizer is refused by name.</summary>
static class TokenizerJsonFile
{
    const string Space = "\u2581";

    public static Vocabulary Read(string file)
    {
        byte[] bytes = InputFile.ReadAllBytes(file);
        using var doc = JsonFile.ParseDocument(bytes, file);
        try
        {
            return Read(doc, file);
        }
        catch (InvalidOperationException e)
        {
            // A value of another JSON kind than the layout has (a number where a string or an object goes), or a
            // string with half a UTF-16 character: the walk below reads the Llama/Mistral layout without a check at each step.
            throw new MolaException($"{file}: a value of the wrong JSON kind or not valid text ({e.Message.TrimEnd('.')}); expected a Hugging Face tokenizer.json of the Llama/Mistral layout");
        }
    }

    static Vocabulary Read(JsonDocument doc, string file)
    {
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new MolaException($"{file}: no \"model\" object (expected a Hugging Face tokenizer.json)");
        string type = model.TryGetProperty("type", out var t) ? t.ToString() : "";
        if (type != "BPE")
            throw new MolaException($"{file}: model type '{type}'; only BPE (the Llama/Mistral layout) is supported");
        foreach (string key in (string[])["continuing_subword_prefix", "end_of_word_suffix"])
            if (model.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0)
                throw new MolaException($"{file}: model.{key} '{v.GetString()}' is not supported (the Llama/Mistral layout has none)");
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw new MolaException($"{file}: model.dropout {dropout.GetDouble()}: BPE dropout is not supported");
        var (addPrefix, metaspace) = SpaceHandling(root, file);
        bool byteFallback = Bool(model, "byte_fallback", false, file);
        bool fuseUnknown = Bool(model, "fuse_unk", false, file);
        string? unk = model.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;

        // Pieces by id: the model's vocab, then added tokens (which may extend it).
        var byId = new Dictionary<int, (string Piece, PieceType Type)>();
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new MolaException($"{file}: model.vocab must be an object of piece -> id");
        foreach (var p in vocab.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                throw new MolaException($"{file}: model.vocab['{p.Name}'] must be a non-negative integer id");
            PieceType kind = p.Name == unk ? PieceType.Unknown
                : byteFallback && BpeEncoder.ByteOfPiece(p.Name) >= 0 ? PieceType.Byte : PieceType.Normal;
            if (!byId.TryAdd(id, (p.Name, kind)))
                throw new MolaException($"{file}: id {id} is given to both '{byId[id].Piece}' and '{p.Name}' in model.vocab");
        }
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var a in added.EnumerateArray())
            {
                if (!a.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out int id) || id < 0
                    || !a.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new MolaException($"{file}: every entry of added_tokens needs an integer \"id\" and a string \"content\"");
                string piece = content.GetString()!;
                bool special = a.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True;
                PieceType kind = piece == unk ? PieceType.Unknown : special ? PieceType.Control : PieceType.UserDefined;
                if (byId.TryGetValue(id, out var known) && known.Piece != piece)
                    throw new MolaException($"{file}: added token '{piece}' has id {id}, which model.vocab gives to '{known.Piece}'");
                byId[id] = (piece, kind);
            }
        if (byId.Count == 0)
            throw new MolaException($"{file}: model.vocab is empty");
        // Checked before the tables are sized by it: an id of 2^31 - 1 would ask for gigabytes.
        int maxId = byId.Keys.Max();
        if (maxId >= byId.Count)
            throw new MolaException($"{file}: id {maxId} is past the {byId.Count} pieces (ids must run from 0 to {byId.Count - 1})");
        int n = maxId + 1;
        var pieces = new string[n];
        var types = new PieceType[n];
        for (int i = 0; i < n; i++)
        {
            if (!byId.TryGetValue(i, out var entry))
                throw new MolaException($"{file}: no piece has id {i} (ids must run from 0 to {n - 1})");
            (pieces[i], types[i]) = entry;
        }
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < n; i++) index.TryAdd(pieces[i], i);
        return new Vocabulary
        {
            Pieces = pieces,
            Types = types,
            Scores = new float[n],
            Merges = ReadMerges(model, index, file),
            ByteFallback = byteFallback,
            AddDummyPrefix = addPrefix,
            PrefixUnlessLeadingSpace = metaspace,
            RemoveExtraWhitespaces = false,
            FuseUnknown = fuseUnknown,
            BosId = index.TryGetValue("<s>", out int bos) ? bos : null,
            EosId = index.TryGetValue("</s>", out int eos) ? eos : null,
        };
    }

    static bool Bool(JsonElement e, string key, bool fallback, string file) =>
        !e.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null ? fallback
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
        : throw new MolaException($"{file}: model.{key} must be true or false");

    static Dictionary<(int, int), (int, int)> ReadMerges(JsonElement model, Dictionary<string, int> index, string file)
    {
        if (!model.TryGetProperty("merges", out var merges) || merges.ValueKind != JsonValueKind.Array)
            throw new MolaException($"{file}: model.merges must be a list");
        var result = new Dictionary<(int, int), (int, int)>();
        int rank = 0;
        foreach (var m in merges.EnumerateArray())
        {
            // Written either as "left right" or, by newer versions, as ["left", "right"].
            string[] parts = m.ValueKind == JsonValueKind.String ? m.GetString()!.Split(' ')
                : m.ValueKind == JsonValueKind.Array ? [.. m.EnumerateArray().Select(x => x.GetString() ?? "")] : [];
            if (parts.Length != 2)
                throw new MolaException($"{file}: model.merges[{rank}] must be \"left right\" or [left, right]");
            if (!index.TryGetValue(parts[0], out int left) || !index.TryGetValue(parts[1], out int right)
                || !index.TryGetValue(parts[0] + parts[1], out int merged))
                throw new MolaException($"{file}: model.merges[{rank}] ('{parts[0]}' + '{parts[1]}') uses a piece not in model.vocab");
            result.TryAdd((left, right), (rank, merged));
            rank++;
        }
        return result;
    }

    /// <summary>Whether a ▁ is put before the text, and whether by Metaspace (which skips it when the text
    /// starts with a space); refuses layouts other than the two Llama/Mistral ones.</summary>
    static (bool Prefix, bool Metaspace) SpaceHandling(JsonElement root, string file)
    {
        var normalizers = Steps(root, "normalizer", "normalizers");
        var preTokenizers = Steps(root, "pre_tokenizer", "pretokenizers");
        bool prepend = false, replace = false;
        foreach (var n in normalizers)
        {
            string type = n.TryGetProperty("type", out var t) ? t.ToString() : "";
            if (type == "Prepend" && n.TryGetProperty("prepend", out var p) && p.GetString() == Space)
                prepend = true;
            else if (type == "Replace" && n.TryGetProperty("pattern", out var pattern)
                && pattern.TryGetProperty("String", out var from) && from.GetString() == " "
                && n.TryGetProperty("content", out var to) && to.GetString() == Space)
                replace = true;
            else
                throw new MolaException($"{file}: normalizer {Describe(n)} is not supported (expected Prepend \"\u2581\" and Replace \" \" -> \"\u2581\", as Llama/Mistral have)");
        }
        if (preTokenizers.Count == 0)
        {
            if (!replace)
                throw new MolaException($"{file}: spaces are not turned into \u2581 (expected a normalizer Replace \" \" -> \"\u2581\" or a Metaspace pre_tokenizer)");
            return (prepend, false);
        }
        if (preTokenizers.Count > 1 || normalizers.Count > 0)
            throw new MolaException($"{file}: pre_tokenizer {Describe(preTokenizers[0])} together with a normalizer is not supported (the Llama/Mistral layouts have one or the other)");
        var m = preTokenizers[0];
        string kind = m.TryGetProperty("type", out var k) ? k.ToString() : "";
        if (kind != "Metaspace" || !m.TryGetProperty("replacement", out var r) || r.GetString() != Space)
            throw new MolaException($"{file}: pre_tokenizer {Describe(m)} is not supported (expected Metaspace with replacement \"\u2581\", or none)");
        // Metaspace splits the text into words at each ▁ unless told not to, and SentencePiece never does.
        if (!m.TryGetProperty("split", out var split) || split.ValueKind != JsonValueKind.False)
            throw new MolaException($"{file}: pre_tokenizer Metaspace with split true (or unset) is not supported; Llama/Mistral have \"split\": false");
        string scheme = m.TryGetProperty("prepend_scheme", out var s) ? s.GetString() ?? "" : "";
        return scheme switch
        {
            "first" or "always" => (true, true),
            "never" => (false, true),
            _ => throw new MolaException($"{file}: pre_tokenizer Metaspace prepend_scheme '{scheme}'; expected first, always or never"),
        };
    }

    static List<JsonElement> Steps(JsonElement root, string key, string listKey)
    {
        if (!root.TryGetProperty(key, out var e) || e.ValueKind == JsonValueKind.Null) return [];
        if (e.TryGetProperty("type", out var t) && t.GetString() == "Sequence" && e.TryGetProperty(listKey, out var list))
            return [.. list.EnumerateArray()];
        return [e];
    }

    static string Describe(JsonElement e)
    {
        if (e.TryGetProperty("type", out var t)) return $"'{t}'";
        string raw = string.Join(' ', e.GetRawText().Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        return raw.Length <= 60 ? raw : raw[..57] + "...";
    }
}
