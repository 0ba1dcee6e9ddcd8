using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Mola.Data;

namespace Mola.Evaluation;

/// <summary>One of the paper's six benchmarks: its label set, how a record's gold label is read,
/// and the response text that stands for each label. Records carry <c>instruction</c>, <c>input</c>,
/// <c>output</c> and <c>answer</c> (docs/BENCHMARKS.md shows how each data set becomes records).</summary>
public sealed class Benchmark
{
    /// <summary>The name used on the command line: <c>scienceqa</c>, <c>mrpc</c>, ...</summary>
    public string Name { get; }
    /// <summary>The name people write: <c>ScienceQA</c>, <c>MRPC</c>, ...</summary>
    public string DisplayName { get; }
    /// <summary>Every gold and predicted label is one of these, spelled as here. Multiple choice:
    /// option letters. GLUE: the class names the data set uses, in the order of its integer labels
    /// (<c>Labels[i]</c> is GLUE label <c>i</c>).</summary>
    public IReadOnlyList<string> Labels { get; }
    /// <summary>True where labels are option letters (ScienceQA, CommonsenseQA, OpenBookQA).</summary>
    public bool IsMultipleChoice { get; }
    /// <summary>True for CoLA, which GLUE scores by Matthews correlation; the paper reports accuracy
    /// for all six, so accuracy is always computed too.</summary>
    public bool ReportsMcc { get; }

    internal Benchmark(string name, string displayName, IReadOnlyList<string> labels, bool reportsMcc = false)
    {
        Name = name;
        DisplayName = displayName;
        Labels = labels;
        IsMultipleChoice = labels.All(l => l.Length == 1);
        ReportsMcc = reportsMcc;
    }

    /// <summary>The response a record with this gold label is trained on, exactly as its <c>output</c>
    /// is written ("Answer: The answer is B."); for likelihood scoring, the continuation of the prompt
    /// (which ends after "### Response:\n") whose probability stands for the label.</summary>
    public string Continuation(string label)
    {
        if (!Labels.Contains(label)) throw new ArgumentException($"\"{label}\" is not a {DisplayName} label ({string.Join(", ", Labels)})", nameof(label));
        return $"Answer: The answer is {label}.";
    }

    /// <summary>The label a generated response names, or null when none can be read (see <see cref="AnswerExtraction"/>).</summary>
    public string? ExtractAnswer(string generated) => AnswerExtraction.Extract(generated, Labels);

    static readonly Regex OptionsHeader = new(@"Options\s*:", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
    static readonly Regex OptionMarker = new(@"\(([A-Z])\)", RegexOptions.CultureInvariant);

    /// <summary>The labels a record offers, for likelihood scoring: for multiple choice, the letters
    /// written as "(A)", "(B)", ... after the last "Options:" of the prompt (a ScienceQA item may have
    /// two options, not five); all labels when fewer than two are found, and for GLUE.</summary>
    public IReadOnlyList<string> CandidateLabels(string prompt)
    {
        if (!IsMultipleChoice) return Labels;
        var header = OptionsHeader.Matches(prompt).LastOrDefault();
        string options = header is null ? prompt : prompt[(header.Index + header.Length)..];
        var present = OptionMarker.Matches(options).Select(m => m.Groups[1].Value).ToHashSet();
        var offered = Labels.Where(present.Contains).ToList();
        return offered.Count >= 2 ? offered : Labels;
    }

    /// <summary>The gold label of a record: its <c>answer</c> (one of <see cref="Labels"/>, any case,
    /// surrounding spaces ignored), or, where <c>answer</c> is missing, null or empty, the label its
    /// <c>output</c> names ("Answer: The answer is B."). <paramref name="where"/> ("FILE:LINE") starts
    /// every error message.</summary>
    public string GoldLabel(string? answer, string? output, string where)
    {
        string expected = string.Join(", ", Labels);
        if (!string.IsNullOrWhiteSpace(answer))
        {
            return Labels.FirstOrDefault(l => string.Equals(l, answer.Trim(), StringComparison.OrdinalIgnoreCase))
                ?? throw new MolaException($"{where}: \"answer\" is \"{answer}\"; a {DisplayName} answer is one of {expected}");
        }
        if (string.IsNullOrWhiteSpace(output))
            throw new MolaException($"{where}: no \"answer\" and no \"output\" to read the gold label from (expected one of {expected})");
        return AnswerExtraction.Extract(output, Labels)
            ?? throw new MolaException($"{where}: no \"answer\", and \"output\" (\"{Shorten(output)}\") names none of {expected} (write it as \"Answer: The answer is {Labels[0]}.\")");
    }

    /// <summary><see cref="GoldLabel(string?, string?, string)"/> on a JSON record; <c>answer</c> must be a
    /// string (a GLUE integer label is refused with the names it stands for).</summary>
    public string GoldLabel(JsonObject record, string path, int line)
    {
        string where = $"{path}:{line}";
        if (record["answer"] is JsonValue v && v.GetValueKind() == JsonValueKind.Number)
            throw new MolaException($"{where}: \"answer\" is the number {v.ToJsonString()}; write the label as a string, one of "
                + string.Join(", ", Labels.Select((l, i) => IsMultipleChoice ? $"\"{l}\"" : $"\"{l}\" (GLUE label {i})")));
        return GoldLabel(Jsonl.OptionalString(record, "answer", path, line), Jsonl.OptionalString(record, "output", path, line), where);
    }

    static string Shorten(string s) => s.Length <= 60 ? s : s[..57] + "...";
}

/// <summary>The registry of the paper's six benchmarks, looked up by name.</summary>
public static class Benchmarks
{
    static readonly string[] FiveLetters = ["A", "B", "C", "D", "E"];

    public static IReadOnlyList<Benchmark> All { get; } =
    [
        // ScienceQA has two to five options; the original preparation letters them A..E.
        new("scienceqa", "ScienceQA", FiveLetters),
        new("commonsenseqa", "CommonsenseQA", FiveLetters),
        new("openbookqa", "OpenBookQA", ["A", "B", "C", "D"]),
        // GLUE class names in the data set's own spelling and integer order (0, 1).
        new("mrpc", "MRPC", ["not_equivalent", "equivalent"]),
        new("cola", "CoLA", ["unacceptable", "acceptable"], reportsMcc: true),
        new("rte", "RTE", ["entailment", "not_entailment"]),
    ];

    public static IReadOnlyList<string> Names { get; } = All.Select(b => b.Name).ToList();

    /// <summary>The benchmark of that name (any case), or a MolaException that lists the known ones.</summary>
    public static Benchmark Get(string name) =>
        All.FirstOrDefault(b => string.Equals(b.Name, name?.Trim(), StringComparison.OrdinalIgnoreCase))
        ?? throw new MolaException($"unknown task \"{name}\"; known tasks: {string.Join(", ", Names)}");
}
