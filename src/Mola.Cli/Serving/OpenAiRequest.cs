using System.Text.Json;
using Mola.Generation;

namespace Mola.Cli.Serving;

/// <summary>
/// The fields of a completions or chat request that the server reads, each checked for its kind: a wrong one is a
/// 400 naming the field and what it holds. <c>null</c> counts as absent (OpenAI's clients send it); fields the server
/// does not use (<c>user</c>, <c>frequency_penalty</c>, ...) are ignored, as OpenAI-compatible servers do.
/// </summary>
sealed record OpenAiRequest
{
    public string? Model { get; init; }
    public string? Prompt { get; init; }
    public IReadOnlyList<(string Role, string Content)>? Messages { get; init; }
    public required RequestSettings Settings { get; init; }
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }

    public static OpenAiRequest Parse(JsonElement body, bool chat)
    {
        if (body.ValueKind != JsonValueKind.Object) throw Wrong("body", "a JSON object", body);
        int? n = Int(body, "n");
        if (n is not null && n != 1) throw new ApiError(400, $"n: only 1 choice per request is served, got {n}", "n");
        var streamOptions = Get(body, "stream_options");
        if (streamOptions is { } so && so.ValueKind != JsonValueKind.Object) throw Wrong("stream_options", "an object", so);
        return new OpenAiRequest
        {
            Model = String(body, "model"),
            Prompt = chat ? null : PromptText(body),
            Messages = chat ? ReadMessages(body) : null,
            Settings = new RequestSettings
            {
                // Chat clients send max_completion_tokens, its newer name.
                MaxTokens = Int(body, "max_tokens") ?? (chat ? Int(body, "max_completion_tokens") : null),
                Temperature = Number(body, "temperature"),
                TopP = Number(body, "top_p"),
                Seed = Long(body, "seed"),
                Stop = Stop(body),
            },
            Stream = Bool(body, "stream") ?? false,
            IncludeUsage = streamOptions is { } o && (Bool(o, "include_usage", "stream_options.include_usage") ?? false),
        };
    }

    static JsonElement? Get(JsonElement o, string key) =>
        o.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    static ApiError Wrong(string field, string expected, JsonElement got)
    {
        string text = got.GetRawText();
        if (text.Length > 40) text = text[..40] + "...";
        return new ApiError(400, $"{field}: expected {expected}, got {text.ReplaceLineEndings(" ")}", field);
    }

    static string? String(JsonElement o, string key, string? field = null) => Get(o, key) switch
    {
        null => null,
        { ValueKind: JsonValueKind.String } v => v.GetString(),
        { } v => throw Wrong(field ?? key, "a string", v),
    };

    static bool? Bool(JsonElement o, string key, string? field = null) => Get(o, key) switch
    {
        null => null,
        { ValueKind: JsonValueKind.True } => true,
        { ValueKind: JsonValueKind.False } => false,
        { } v => throw Wrong(field ?? key, "true or false", v),
    };

    static double? Number(JsonElement o, string key) => Get(o, key) switch
    {
        null => null,
        { ValueKind: JsonValueKind.Number } v when v.TryGetDouble(out double d) && double.IsFinite(d) => d,
        { } v => throw Wrong(key, "a number", v),
    };

    static int? Int(JsonElement o, string key) => Get(o, key) switch
    {
        null => null,
        { ValueKind: JsonValueKind.Number } v when v.TryGetInt32(out int i) => i,
        { } v => throw Wrong(key, "an integer from -2147483648 to 2147483647", v),
    };

    static long? Long(JsonElement o, string key) => Get(o, key) switch
    {
        null => null,
        { ValueKind: JsonValueKind.Number } v when v.TryGetInt64(out long i) => i,
        { } v => throw Wrong(key, "a 64-bit integer", v),
    };

    static IReadOnlyList<string> Stop(JsonElement o) => Get(o, "stop") switch
    {
        null => [],
        { ValueKind: JsonValueKind.String } v => [v.GetString()!],
        { ValueKind: JsonValueKind.Array } v => v.EnumerateArray().Select((s, i) =>
            s.ValueKind == JsonValueKind.String ? s.GetString()! : throw Wrong($"stop[{i}]", "a string", s)).ToList(),
        { } v => throw Wrong("stop", "a string or an array of strings", v),
    };

    /// <summary>A string, or an array of exactly one string (n prompts would be n choices).</summary>
    static string PromptText(JsonElement o) => Get(o, "prompt") switch
    {
        null => throw new ApiError(400, "prompt: missing (expected a string)", "prompt"),
        { ValueKind: JsonValueKind.String } v => v.GetString()!,
        { ValueKind: JsonValueKind.Array } v when v.GetArrayLength() == 1 && v[0].ValueKind == JsonValueKind.String => v[0].GetString()!,
        { } v => throw Wrong("prompt", "a string (or an array of one string)", v),
    };

    static List<(string Role, string Content)> ReadMessages(JsonElement o)
    {
        var messages = Get(o, "messages") ?? throw new ApiError(400, "messages: missing (expected an array of messages)", "messages");
        if (messages.ValueKind != JsonValueKind.Array) throw Wrong("messages", "an array of messages", messages);
        var list = new List<(string, string)>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string field = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw Wrong(field, "an object with role and content", m);
            string role = String(m, "role", field + ".role") ?? throw new ApiError(400, $"{field}.role: missing", field + ".role");
            list.Add((role, Content(m, field + ".content")));
        }
        return list;
    }

    /// <summary>A string, or an array of text parts (<c>{"type": "text", "text": ...}</c>) joined.</summary>
    static string Content(JsonElement m, string field) => Get(m, "content") switch
    {
        null => "",
        { ValueKind: JsonValueKind.String } v => v.GetString()!,
        { ValueKind: JsonValueKind.Array } v => string.Concat(v.EnumerateArray().Select((p, i) =>
            p.ValueKind == JsonValueKind.Object && String(p, "type", $"{field}[{i}].type") == "text"
                ? String(p, "text", $"{field}[{i}].text") ?? ""
                : throw Wrong($"{field}[{i}]", "a text part {\"type\": \"text\", \"text\": ...}", p))),
        { } v => throw Wrong(field, "a string or an array of text parts", v),
    };
}
