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
        using var reader = new StreamReader(path);
        int first = reader.Peek();
        while (first >= 0 && char.IsWhiteSpace((char)first)) { reader.Read(); first = reader.Peek(); }
        if (first == '[')
        {
            // Rewind so that the array's line numbers count the whitespace skipped above.
            reader.BaseStream.Position = 0;
            reader.DiscardBufferedData();
            foreach (var item in ReadArray(path, reader.ReadToEnd())) yield return item;
            yield break;
        }
        // Count the whitespace skipped above so line numbers stay right.
        reader.BaseStream.Position = 0;
        reader.DiscardBufferedData();
        int lineNo = 0;
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonNode? node;
            try { node = JsonNode.Parse(line); }
            catch (JsonException e) { throw new MolaException($"{path}:{lineNo}: invalid JSON ({Short(e)})"); }
            if (node is not JsonObject obj) throw new MolaException($"{path}:{lineNo}: expected a JSON object");
            yield return (lineNo, obj);
        }
    }

    /// <summary>The items of a JSON array, each with the line its value starts on (a reader over the
    /// bytes, because a parsed <see cref="JsonNode"/> no longer knows where it came from).</summary>
    static List<(int, JsonObject)> ReadArray(string path, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        var items = new List<(int, JsonObject)>();
        var reader = new Utf8JsonReader(bytes);
        int countedTo = 0, line = 1;
        int LineAt(long offset)
        {
            for (; countedTo < offset; countedTo++)
                if (bytes[countedTo] == '\n') line++;
            return line;
        }
        try
        {
            reader.Read(); // the '[' that the caller saw
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                int start = (int)reader.TokenStartIndex;
                int itemLine = LineAt(start);
                bool isObject = reader.TokenType == JsonTokenType.StartObject;
                reader.Skip();
                if (!isObject)
                    throw new MolaException($"{path}:{itemLine}: expected a JSON object (item {items.Count} of the array)");
                var obj = (JsonObject)JsonNode.Parse(bytes.AsSpan(start, (int)reader.BytesConsumed - start))!;
                items.Add((itemLine, obj));
            }
            if (reader.Read()) throw new MolaException($"{path}:{LineAt(reader.TokenStartIndex)}: unexpected text after the JSON array");
        }
        catch (JsonException e) { throw new MolaException($"{path}:{(e.LineNumber ?? 0) + 1}: invalid JSON ({Short(e)})"); }
        return items;
    }

    static string Short(JsonException e)
    {
        string m = e.Message;
        int cut = m.IndexOf(" Path:", StringComparison.Ordinal);
        if (cut < 0) cut = m.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return cut > 0 ? m[..cut] : m;
    }

    /// <summary>A required string field of a record, or a clear error (missing, or not a string).</summary>
    public static string RequireString(JsonObject o, string key, string path, int line) =>
        OptionalString(o, key, path, line) ?? throw new MolaException($"{path}:{line}: missing field \"{key}\" (expected a string)");

    public static string? OptionalString(JsonObject o, string key, string path, int line) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        var other => throw new MolaException($"{path}:{line}: field \"{key}\" must be a string, not {Kind(other)}"),
    };

    static string Kind(JsonNode node) => node.GetValueKind() switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        var k => k.ToString().ToLowerInvariant(),
    };
}
