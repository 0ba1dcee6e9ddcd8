using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Mola.Data;

/// <summary>
/// A prompt template in alpaca-lora's JSON shape (<c>templates/*.json</c>): <c>prompt_input</c>
/// with <c>{instruction}</c> and <c>{input}</c>, <c>prompt_no_input</c> with <c>{instruction}</c>,
/// and <c>response_split</c>, the marker after which generated text is the response.
/// Placeholders follow Python's <c>str.format</c>, which the original fills them with: one pass,
/// <c>{{</c> and <c>}}</c> are literal braces, so braces inside an instruction stay as written.
/// </summary>
public sealed class PromptTemplate
{
    /// <summary>The built-in template, exactly alpaca-lora's <c>templates/alpaca.json</c> (MoLA uses it unchanged).</summary>
    public static PromptTemplate Alpaca { get; } = new(
        "alpaca",
        "Template used by Alpaca-LoRA.",
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
        "### Response:");

    public static IReadOnlyList<string> BuiltInNames { get; } = ["alpaca"];

    const string Shape = "a prompt template is a JSON object with the strings \"prompt_input\", \"prompt_no_input\" and \"response_split\"";

    /// <summary>"alpaca" or the path of the file it came from.</summary>
    public string Name { get; }
    public string Description { get; }
    public string PromptInput { get; }
    public string PromptNoInput { get; }
    public string ResponseSplit { get; }

    readonly List<Piece> _withInput, _noInput;

    /// <summary>A literal run of text, or (when <c>Field</c> is set) a placeholder to fill.</summary>
    readonly record struct Piece(string Text, string? Field);

    public PromptTemplate(string name, string description, string promptInput, string promptNoInput, string responseSplit)
    {
        Name = name;
        Description = description;
        PromptInput = promptInput;
        PromptNoInput = promptNoInput;
        ResponseSplit = responseSplit;
        _withInput = Parse(promptInput, name, "prompt_input", ["instruction", "input"]);
        _noInput = Parse(promptNoInput, name, "prompt_no_input", ["instruction"]);
    }

    /// <summary>A built-in template by name (<c>alpaca</c>), or a template JSON file.</summary>
    public static PromptTemplate Load(string nameOrPath)
    {
        if (BuiltInNames.Contains(nameOrPath.ToLowerInvariant())) return Alpaca;
        if (File.Exists(nameOrPath)) return FromFile(nameOrPath);
        throw new MolaException($"{nameOrPath}: no such prompt template (built in: {string.Join(", ", BuiltInNames)}; " +
            "otherwise give the path of a JSON file with \"prompt_input\", \"prompt_no_input\" and \"response_split\")");
    }

    public static PromptTemplate FromFile(string path)
    {
        if (!File.Exists(path)) throw new MolaException($"{path}: prompt template not found");
        var o = JsonFile.ReadObject(path, Shape);
        string Key(string key, bool required = true) =>
            JsonFile.String(o, key, path) ?? (required ? throw new MolaException($"{path}: missing key \"{key}\" ({Shape})") : "");
        return new PromptTemplate(path, Key("description", required: false), Key("prompt_input"), Key("prompt_no_input"), Key("response_split"));
    }

    /// <summary>The user prompt: <c>prompt_input</c> when there is an input, else <c>prompt_no_input</c>
    /// (the original tests the input's truthiness, so an empty input counts as none).</summary>
    public string Prompt(string instruction, string? input = null)
    {
        bool hasInput = !string.IsNullOrEmpty(input);
        var sb = new StringBuilder();
        foreach (var piece in hasInput ? _withInput : _noInput)
            sb.Append(piece.Field switch
            {
                null => piece.Text,
                "instruction" => instruction,
                _ => input,
            });
        return sb.ToString();
    }

    /// <summary>The training text: the user prompt followed directly by the output.</summary>
    public string Full(InstructionRecord record) => Prompt(record.Instruction, record.Input) + record.Output;

    /// <summary>
    /// The response in generated text, as alpaca-lora's <c>get_response</c> reads it: the text after the
    /// first <c>response_split</c> (up to a second one, should the model write the marker again), trimmed.
    /// Give it the prompt plus the generation. Text without the marker is taken to be the response itself.
    /// </summary>
    public string ExtractResponse(string generatedText)
    {
        if (ResponseSplit.Length == 0) return generatedText.Trim();
        int at = generatedText.IndexOf(ResponseSplit, StringComparison.Ordinal);
        if (at < 0) return generatedText.Trim();
        string rest = generatedText[(at + ResponseSplit.Length)..];
        int next = rest.IndexOf(ResponseSplit, StringComparison.Ordinal);
        return (next < 0 ? rest : rest[..next]).Trim();
    }

    /// <summary>Splits a template into literal text and placeholders, or says what is wrong with it.</summary>
    static List<Piece> Parse(string template, string source, string key, string[] fields)
    {
        var pieces = new List<Piece>();
        var literal = new StringBuilder();
        for (int i = 0; i < template.Length; i++)
        {
            char c = template[i];
            bool doubled = i + 1 < template.Length && template[i + 1] == c;
            if ((c == '{' || c == '}') && doubled)
            {
                literal.Append(c);
                i++;
            }
            else if (c == '}')
                throw new MolaException($"{source}: \"{key}\" has a single '}}' at character {i} (write '}}}}' for a literal brace)");
            else if (c == '{')
            {
                int close = template.IndexOf('}', i + 1);
                if (close < 0)
                    throw new MolaException($"{source}: \"{key}\" has an unclosed '{{' at character {i} (write '{{{{' for a literal brace)");
                string field = template[(i + 1)..close];
                if (!fields.Contains(field))
                    throw new MolaException($"{source}: \"{key}\" uses {{{field.ReplaceLineEndings("\\n")}}}; it may use only {string.Join(" and ", fields.Select(f => "{" + f + "}"))}");
                if (literal.Length > 0) pieces.Add(new Piece(literal.ToString(), null));
                literal.Clear();
                pieces.Add(new Piece("", field));
                i = close;
            }
            else
                literal.Append(c);
        }
        if (literal.Length > 0) pieces.Add(new Piece(literal.ToString(), null));
        // A template that drops a field would train and evaluate on prompts without the task in them.
        foreach (var field in fields)
        {
            if (!pieces.Any(p => p.Field == field))
                throw new MolaException($"{source}: \"{key}\" does not use {{{field}}}; the prompt would leave the record's {field} out");
        }
        return pieces;
    }
}
