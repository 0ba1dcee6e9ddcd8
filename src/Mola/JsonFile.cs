using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Mola;

/// <summary>
/// One way to read the JSON a user hands us (config.json, adapter_config.json, the shard index, a template, a
/// safetensors header): strict UTF-8, no duplicate keys (JSON leaves them undefined; the last silently won), and
/// typed values whose errors share one shape: <c>FILE: key "k": expected ..., got ...</c>.
/// </summary>
public static class JsonFile
{
    static readonly JsonDocumentOptions Strict = new() { AllowDuplicateProperties = false };

    /// <summary>The JSON object in file <paramref name="path"/>; <paramref name="shape"/> says what the file must
    /// hold when it is not an object.</summary>
    public static JsonObject ReadObject(string path, string shape)
    {
        return ParseObject(InputFile.ReadAllBytes(path), path, shape);
    }

    /// <summary>Parses UTF-8 bytes that must hold one JSON object; errors name <paramref name="source"/>.</summary>
    public static JsonObject ParseObject(ReadOnlySpan<byte> utf8, string source, string shape)
    {
        RequireUtf8(utf8, source);
        if (utf8.StartsWith(Encoding.UTF8.Preamble)) utf8 = utf8[Encoding.UTF8.Preamble.Length..];
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(utf8, null, Strict);
        }
        catch (JsonException) when (FirstDuplicate(utf8) is var (line, key))
        {
            throw new MolaException($"{source}:{line}: duplicate key \"{key}\" (each key may appear once in an object)");
        }
        catch (JsonException e) { throw InvalidJson(source, e); }
        catch (InvalidOperationException e) { throw NotText(source, e); }
        if (root is not JsonObject o) throw new MolaException($"{source}: expected a JSON object ({shape})");
        return o;
    }

    /// <summary>The same checks for a reader that walks a <see cref="JsonDocument"/> (tokenizer.json, tens of MB).</summary>
    public static JsonDocument ParseDocument(ReadOnlySpan<byte> utf8, string source)
    {
        RequireUtf8(utf8, source);
        try { return JsonDocument.Parse(utf8.ToArray(), Strict); }
        catch (JsonException) when (FirstDuplicate(utf8) is var (line, key))
        {
            throw new MolaException($"{source}:{line}: duplicate key \"{key}\" (each key may appear once in an object)");
        }
        catch (JsonException e) { throw InvalidJson(source, e); }
        catch (InvalidOperationException e) { throw NotText(source, e); }
    }

    static void RequireUtf8(ReadOnlySpan<byte> utf8, string source)
    {
        // The parser takes invalid UTF-8 inside strings as it is; the names and values would then be garbage.
        if (!System.Text.Unicode.Utf8.IsValid(utf8))
        {
            int line = 1 + utf8[..FirstInvalidUtf8(utf8)].Count((byte)'\n');
            throw new MolaException($"{source}:{line}: not valid UTF-8 text");
        }
    }

    /// <summary>The error for JSON that does not parse, at the 1-based line the parser stopped on.</summary>
    public static MolaException InvalidJson(string source, JsonException e) =>
        new($"{source}:{(e.LineNumber ?? 0) + 1}: invalid JSON ({Short(e)})");

    /// <summary>The parser's message without its position suffix ("Path: $ | LineNumber: 0 | BytePositionInLine: 9."):
    /// it counts lines from 0 within what it was given, which would contradict the line number we report.</summary>
    public static string Short(JsonException e)
    {
        string m = e.Message;
        int cut = new[] { " Path:", " LineNumber:" }.Select(s => m.IndexOf(s, StringComparison.Ordinal)).Where(i => i > 0).DefaultIfEmpty(m.Length).Min();
        // The parser quotes the text it choked on, which may span lines: an error stays one line.
        return string.Join(' ', m[..cut].Split(['\r', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).TrimEnd('.', ' ');
    }

    /// <summary>A lone UTF-16 surrogate escape ("\ud800") is valid JSON but cannot become a .NET string.</summary>
    public static MolaException NotText(string source, InvalidOperationException e) =>
        new($"{source}: a string is not valid text ({e.Message.TrimEnd('.')}; a \\u escape names half a character)");

    public static MolaException Expected(string source, string key, string expected, JsonNode? got) =>
        new($"{source}: key \"{key}\": expected {expected}, got {Describe(got)}");

    /// <summary>How a value reads in an error: short JSON, cut when long.</summary>
    public static string Describe(JsonNode? n)
    {
        if (n is null) return "null";
        string json;
        try { json = n.ToJsonString(); }
        catch (InvalidOperationException) { return "text that is not valid"; }
        return json.Length <= 40 ? json : json[..37] + "...";
    }

    public static string? String(JsonObject o, string key, string source) => o[key] is null ? null : StringOf(o[key], key, source);

    /// <summary>A string value (of a list entry, say), or the error naming <paramref name="key"/> and <paramref name="expected"/>.</summary>
    public static string StringOf(JsonNode? n, string key, string source, string expected = "a string") => n switch
    {
        JsonValue v when v.GetValueKind() == JsonValueKind.String => StringValue(v, key, source),
        _ => throw Expected(source, key, expected, n),
    };

    public static bool? Bool(JsonObject o, string key, string source) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() is JsonValueKind.True or JsonValueKind.False => v.GetValue<bool>(),
        var other => throw Expected(source, key, "true or false", other),
    };

    /// <summary>An integer; a number with a zero fraction (<c>8.0</c>, <c>1e2</c>) counts, as in Python's json.</summary>
    public static int? Int(JsonObject o, string key, string source) => o[key] is null ? null : IntValue(o[key], key, source);

    public static int IntValue(JsonNode? n, string key, string source) =>
        n is JsonValue v && v.TryGetValue<int>(out int i) ? i
        : n is JsonValue d && d.GetValueKind() == JsonValueKind.Number && d.TryGetValue<double>(out double x) && x == Math.Floor(x) && x >= int.MinValue && x <= int.MaxValue ? (int)x
        : throw Expected(source, key, "an integer", n);

    /// <summary>A finite number (1e400 parses as infinity).</summary>
    public static double? Number(JsonObject o, string key, string source) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<double>(out double d) && double.IsFinite(d) => d,
        var other => throw Expected(source, key, "a finite number", other),
    };

    /// <summary>A list of integers, or null when the key is absent.</summary>
    public static int[]? IntList(JsonObject o, string key, string source) => o[key] switch
    {
        null => null,
        JsonArray a => a.Select(x => IntValue(x, key, source)).ToArray(),
        var other => throw Expected(source, key, "a list of integers", other),
    };

    static string StringValue(JsonValue v, string key, string source)
    {
        try { return v.GetValue<string>(); }
        catch (InvalidOperationException e) { throw NotText($"{source}: key \"{key}\"", e); }
    }

    static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        int i = 0;
        while (i < bytes.Length && Rune.DecodeFromUtf8(bytes[i..], out _, out int n) == System.Buffers.OperationStatus.Done) i += n;
        return i;
    }

    /// <summary>The line and name of the first key that repeats within one object (the parser's own message cuts
    /// long names short), or null.</summary>
    static (int Line, string Key)? FirstDuplicate(ReadOnlySpan<byte> utf8)
    {
        var reader = new Utf8JsonReader(utf8);
        var open = new Stack<HashSet<string>?>();   // null for an array
        try
        {
            while (reader.Read())
            {
                switch (reader.TokenType)
                {
                    case JsonTokenType.StartObject: open.Push(new HashSet<string>(StringComparer.Ordinal)); break;
                    case JsonTokenType.StartArray: open.Push(null); break;
                    case JsonTokenType.EndObject or JsonTokenType.EndArray: open.Pop(); break;
                    case JsonTokenType.PropertyName:
                        string key = reader.GetString()!;
                        if (!open.Peek()!.Add(key))
                            return (1 + utf8[..(int)reader.TokenStartIndex].Count((byte)'\n'), key);
                        break;
                }
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException) { }
        return null;
    }
}
