using System.Text.Json;
using System.Text.Json.Nodes;

namespace Mola.Data;

/// <summary>Reads JSON Lines (one object a line; blank lines skipped) or a JSON array of objects,
/// with errors that name the file and line.</summary>
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

    static IEnumerable<(int, JsonObject)> ReadArray(string path, string text)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(text); }
        catch (JsonException e) { throw new MolaException($"{path}:{(e.LineNumber ?? 0) + 1}: invalid JSON ({Short(e)})"); }
        var arr = (JsonArray)root!;
        for (int i = 0; i < arr.Count; i++)
        {
            if (arr[i] is not JsonObject o) throw new MolaException($"{path}: item {i} of the array: expected a JSON object");
            yield return (i, o);
        }
    }

    static string Short(JsonException e)
    {
        string m = e.Message;
        int cut = m.IndexOf(" Path:", StringComparison.Ordinal);
        return cut > 0 ? m[..cut] : m;
    }

    /// <summary>A required string field of a record, or a clear error.</summary>
    public static string RequireString(JsonObject o, string key, string path, int line) =>
        o[key] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>()
        : throw new MolaException($"{path}:{line}: missing string field \"{key}\"");

    public static string? OptionalString(JsonObject o, string key, string path, int line) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        _ => throw new MolaException($"{path}:{line}: field \"{key}\" must be a string"),
    };
}
