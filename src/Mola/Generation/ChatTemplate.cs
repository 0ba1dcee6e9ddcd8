using System.Text.Json.Nodes;
using Mola.Data;
using Mola.Templating;
using Mola.Tokenization;

namespace Mola.Generation;

/// <summary>How chat messages become prompt tokens: the adapter's training template, or a model's chat template.</summary>
public interface IChatFormat
{
    /// <summary>What the prompt is rendered with, for the start-up line.</summary>
    string Description { get; }

    /// <summary>The prompt's token ids; bad messages throw <see cref="InvalidRequestException"/>.</summary>
    List<int> Encode(MolaTokenizer tokenizer, IReadOnlyList<(string Role, string Content)> messages);
}

/// <summary>Messages in the training template (<see cref="ChatPrompt"/>), encoded with BOS as <c>mola generate</c> does.</summary>
public sealed class TrainingChatFormat(PromptTemplate template) : IChatFormat
{
    public string Description => $"the training template ({template.Name})";

    public List<int> Encode(MolaTokenizer tokenizer, IReadOnlyList<(string Role, string Content)> messages) =>
        tokenizer.Encode(ChatPrompt.Render(template, messages), bos: true);
}

/// <summary>
/// A model's chat template: the Jinja2 <c>chat_template</c> of its <c>tokenizer_config.json</c> (or a template file),
/// rendered as Hugging Face's <c>apply_chat_template</c> renders it (variables <c>messages</c>, <c>bos_token</c>,
/// <c>eos_token</c>, <c>add_generation_prompt</c> true) and tokenised as it is there, without added special
/// tokens: the template writes BOS itself, and the BOS/EOS strings it writes become those tokens' ids.
/// </summary>
public sealed class ChatTemplate : IChatFormat
{
    readonly JinjaTemplate _template;
    readonly string? _bos, _eos;

    public string Source { get; }
    public string Description => $"the chat template of {Source}";

    ChatTemplate(JinjaTemplate template, string source, string? bos, string? eos)
    {
        _template = template;
        Source = source;
        _bos = bos;
        _eos = eos;
    }

    /// <summary>The chat template of a model directory's <c>tokenizer_config.json</c>; null when it has none.</summary>
    public static ChatTemplate? FromModel(string modelDir)
    {
        string file = Path.Combine(modelDir, "tokenizer_config.json");
        if (!File.Exists(file)) return null;
        var config = JsonFile.ReadObject(file, "a Hugging Face tokenizer config");
        return config["chat_template"] is null ? null : FromConfig(config, file);
    }

    /// <summary>A template file: JSON holding <c>chat_template</c> (a <c>tokenizer_config.json</c>), or the Jinja text
    /// itself (any other name); the BOS/EOS strings then come from <paramref name="modelDir"/>'s tokenizer config
    /// where it has them, else from the tokenizer.</summary>
    public static ChatTemplate Load(string file, string? modelDir)
    {
        if (!File.Exists(file)) throw new MolaException($"{file}: chat template file not found");
        if (file.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
            return FromConfig(JsonFile.ReadObject(file, "a tokenizer config with \"chat_template\""), file);
        string text;
        try { text = new System.Text.UTF8Encoding(false, true).GetString(InputFile.ReadAllBytes(file)); }
        catch (System.Text.DecoderFallbackException) { throw new MolaException($"{file}: not UTF-8 text (a chat template is Jinja text)"); }
        string? config = modelDir is null ? null : Path.Combine(modelDir, "tokenizer_config.json");
        var tokens = config is not null && File.Exists(config) ? JsonFile.ReadObject(config, "a Hugging Face tokenizer config") : null;
        return Parse(text, file, tokens is null ? null : Token(tokens, "bos_token", config!), tokens is null ? null : Token(tokens, "eos_token", config!));
    }

    static ChatTemplate FromConfig(JsonObject config, string file)
    {
        string text = config["chat_template"] switch
        {
            JsonValue => JsonFile.StringOf(config["chat_template"], "chat_template", file),
            // Several named templates (tool use, RAG): the chat one is called "default".
            JsonArray list => list.OfType<JsonObject>().FirstOrDefault(t => t["name"]?.ToString() == "default") is { } d
                ? JsonFile.StringOf(d["template"], "chat_template[name=default].template", file)
                : throw new MolaException($"{file}: key \"chat_template\": a list of templates without one named \"default\""),
            var other => throw JsonFile.Expected(file, "chat_template", "a string (Jinja text)", other),
        };
        return Parse(text, file, Token(config, "bos_token", file), Token(config, "eos_token", file));
    }

    static ChatTemplate Parse(string text, string file, string? bos, string? eos)
    {
        try { return new ChatTemplate(JinjaTemplate.Parse(text), file, bos, eos); }
        catch (TemplateException e) { throw new MolaException($"{file}: chat_template {e.Message}"); }
    }

    /// <summary>A special token as tokenizer configs write it: a string, or an object with its "content".</summary>
    static string? Token(JsonObject config, string key, string file) => config[key] switch
    {
        null => null,
        JsonObject o => JsonFile.String(o, "content", file) ?? throw JsonFile.Expected(file, key, "a string or an object with \"content\"", o),
        var v => JsonFile.StringOf(v, key, file, "a string or an object with \"content\""),
    };

    /// <summary>The prompt text; template errors (its <c>raise_exception</c> among them) throw <see cref="InvalidRequestException"/>.</summary>
    public string Render(IReadOnlyList<(string Role, string Content)> messages, string bosToken, string eosToken, bool addGenerationPrompt = true)
    {
        if (messages.Count == 0) throw new InvalidRequestException("messages", "messages: expected at least one message");
        var list = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList();
        var variables = new Dictionary<string, object?>
        {
            ["messages"] = list,
            ["bos_token"] = bosToken,
            ["eos_token"] = eosToken,
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        try { return _template.Render(variables); }
        catch (TemplateException e) { throw new InvalidRequestException("messages", $"messages: the chat template ({Source}) refused them: {e.Message}"); }
    }

    public List<int> Encode(MolaTokenizer tokenizer, IReadOnlyList<(string Role, string Content)> messages)
    {
        string bos = _bos ?? tokenizer.Piece(tokenizer.BosId), eos = _eos ?? tokenizer.Piece(tokenizer.EosId);
        string text = Render(messages, bos, eos);
        // Special tokens written as text are the tokens themselves; the text between them is encoded piece by piece.
        var ids = new List<int>();
        int start = 0;
        int Find(string token) => token.Length == 0 ? -1 : text.IndexOf(token, start, StringComparison.Ordinal);
        while (start < text.Length)
        {
            int b = Find(bos), e = Find(eos);
            int at = b < 0 ? e : e < 0 ? b : Math.Min(b, e);
            if (at < 0) at = text.Length;
            if (at > start) ids.AddRange(tokenizer.Encode(text[start..at]));
            if (at == text.Length) break;
            bool isBos = at == b;
            ids.Add(isBos ? tokenizer.BosId : tokenizer.EosId);
            start = at + (isBos ? bos : eos).Length;
        }
        return ids;
    }
}
