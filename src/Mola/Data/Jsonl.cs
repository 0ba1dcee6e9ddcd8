using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Mola.Data;

/// <summary>Reads JSON Lines (one object a line; blank lines skipped) or a JSON array of objects,
/// with errors that name the file and line. Each object comes with the (1-based) line it starts on.</summary>
public static class Jsonl
{
    public static IEnumerable<(int Line, JsonObject Obj)> ReadObjects(string path)
    {
        if (!File.Exists(path)) throw new MolaException($"{path}: not found");
        using var reader = new StreamReader(path, StrictUtf8);
        int first;
        try
        {
            first = reader.Peek();
            while (first >= 0 && char.IsWhiteSpace((char)first)) { reader.Read(); first = reader.Peek(); }
        }
        catch (DecoderFallbackException) { throw NotUtf8(path); }
        // Back to the start: the whitespace skipped above counts towards line numbers.
        reader.BaseStream.Position = 0;
        reader.DiscardBufferedData();
        // The first read consumed a UTF-8 byte-order mark (editors on Windows write one); after the rewind the
        // reader hands it back as U+FEFF, which no JSON parser accepts.
        if (first == '[')
        {
            string text;
            try { text = reader.ReadToEnd(); }
            catch (DecoderFallbackException) { throw NotUtf8(path); }
            foreach (var item in ReadArray(path, text.TrimStart(ByteOrderMark))) yield return item;
            yield break;
        }
        int lineNo = 0;
        string? line;
        while ((line = ReadLine(reader, path)) is not null)
        {
            lineNo++;
            if (lineNo == 1) line = line.TrimStart(ByteOrderMark);
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonNode? node;
            try
            {
                node = JsonNode.Parse(line);
                _ = (node as JsonObject)?.Count;   // builds the object now: a duplicate key fails here, with its line
            }
            catch (JsonException e) { throw new MolaException($"{path}:{lineNo}: invalid JSON ({JsonFile.Short(e)}){(lineNo == 1 ? FormatHint : "")}"); }
            catch (ArgumentException e) { throw new MolaException($"{path}:{lineNo}: invalid JSON ({e.Message})"); }
            catch (InvalidOperationException e) { throw JsonFile.NotText($"{path}:{lineNo}", e); }
            if (node is not JsonObject obj) throw new MolaException($"{path}:{lineNo}: expected a JSON object");
            yield return (lineNo, obj);
        }
    }

    // Walks the array with a reader rather than parsing it whole, so that each item carries the line it
    // starts on (errors about a record then name that line, as they do for JSONL).
    static List<(int, JsonObject)> ReadArray(string path, string text)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        var items = new List<(int, JsonObject)>();
        try
        {
            var reader = new Utf8JsonReader(utf8);
            reader.Read(); // the '['
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                int start = (int)reader.TokenStartIndex, line = 1 + utf8.AsSpan(0, start).Count((byte)'\n');
                if (reader.TokenType != JsonTokenType.StartObject) throw new MolaException($"{path}:{line}: expected a JSON object");
                reader.Skip();
                var obj = JsonNode.Parse(utf8.AsSpan(start, (int)reader.BytesConsumed - start))!.AsObject();
                try { _ = obj.Count; }   // a duplicate key fails here, with its line
                catch (ArgumentException e) { throw new MolaException($"{path}:{line}: invalid JSON ({e.Message})"); }
                catch (InvalidOperationException e) { throw JsonFile.NotText($"{path}:{line}", e); }
                items.Add((line, obj));
            }
            reader.Read(); // throws on anything after the ']'
        }
        catch (JsonException e) { throw JsonFile.InvalidJson(path, e); }
        return items;
    }

    /// <summary>A required string field of a record, or a clear error (missing, or not a string).</summary>
    public static string RequireString(JsonObject o, string key, string path, int line) =>
        OptionalString(o, key, path, line) ?? throw new MolaException($"{path}:{line}: missing field \"{key}\" (expected a string)");

    public static string? OptionalString(JsonObject o, string key, string path, int line) => JsonFile.String(o, key, $"{path}:{line}");

    const char ByteOrderMark = '\uFEFF';

    // A pretty-printed object (not in an array) fails on its first line: say what the file must look like.
    const string FormatHint = "; expected one JSON object per line (JSONL) or a JSON array of objects";

    // Invalid bytes would otherwise become U+FFFD silently, in prompts and answers alike.
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    static string? ReadLine(StreamReader reader, string path)
    {
        try { return reader.ReadLine(); }
        catch (DecoderFallbackException) { throw NotUtf8(path); }
    }

    // The reader decodes a block ahead of the line it returns, so the failing line is found in the bytes.
    static MolaException NotUtf8(string path)
    {
        var bytes = File.ReadAllBytes(path).AsSpan();
        int line = 1;
        foreach (var range in bytes.Split((byte)'\n'))
        {
            if (!System.Text.Unicode.Utf8.IsValid(bytes[range])) break;
            line++;
        }
        return new MolaException($"{path}:{line}: not valid UTF-8 text (save the file as UTF-8)");
    }
}
