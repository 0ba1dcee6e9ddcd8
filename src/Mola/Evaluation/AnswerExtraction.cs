using System.Text.RegularExpressions;

namespace Mola.Evaluation;

/// <summary>Reads the predicted label from a model's generated response.
///
/// Labels are either single letters (multiple choice: <c>A</c>..<c>E</c>) or words (GLUE:
/// <c>equivalent</c>, <c>not_entailment</c>, ...). The rules, in order:
/// <list type="number">
/// <item>If the text holds <c>### Response:</c> (a full decoded prompt), only what follows its first
/// occurrence is read, as the original MoLA evaluation does.</item>
/// <item>Cue: the first "answer is" (any case, optional colon, optional "option"/"choice") that is
/// followed by one of the task's labels decides. A letter counts when it is in parentheses
/// (<c>(B)</c>, <c>(b)</c>), or upper case and not followed by a letter or digit (<c>B</c>, <c>B.</c>,
/// <c>B, not C</c>), or lower case and followed by the end or punctuation (<c>b</c>, <c>b.</c>; so
/// "the answer is a dog" is not read as A). "The answer is B, not C" gives B; a repeated
/// "The answer is B. The answer is B." gives B; "The answer is B or C" also gives B. A cue
/// followed by no label ("the answer is unclear") is skipped and the next cue tried.</item>
/// <item>No cue decides: for letters, the whole response (after an optional leading "Answer:") must
/// be a lone label: <c>B</c>, <c>B.</c>, <c>(B)</c>, <c>b</c>, or begin with a parenthesised label
/// and name no other one after it (<c>(B) inherited</c>, not <c>(B) or (C)?</c>). For words, the
/// response must name exactly one of the labels (any number of times, as a whole word, any case).</item>
/// <item>Otherwise the answer is unparseable: <c>null</c>.</item>
/// </list>
/// Word labels match with "_" written as "_", "-" or spaces, so "not entailment" reads as
/// <c>not_entailment</c>; the longer label wins where one contains another. Known limit: "not
/// acceptable" reads as <c>acceptable</c> (only the dataset's own spellings are labels).
///
/// The original MoLA evaluation (evaluation_scienceqa.py) instead takes every match of
/// <c>The answer is ([A-Z]).</c> and fails unless there is exactly one. Both read an answer written
/// like the training output ("Answer: The answer is B.") the same way; this reader is more lenient
/// with case, parentheses and bare labels, and takes the first of several answers where the
/// original fails.</summary>
public static class AnswerExtraction
{
    const string ResponseSplit = "### Response:";

    static readonly Regex Cue = new(@"\banswer\s+is\b\s*:?\s*(?:(?:option|choice)\s+)?[""'“‘*]*",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);

    // Letter right after a cue: parenthesised (any case), upper case not glued to a word, or lower case
    // followed by the end or punctuation.
    static readonly Regex LetterAfterCue = new(
        @"\G(?:\(\s*(?<l>[A-Za-z])\s*\)|(?<l>[A-Z])(?![A-Za-z0-9])|(?<l>[a-z])(?=\s*$|[.,;:!?)\]""'”’*]))",
        RegexOptions.CultureInvariant);

    // A whole response that is one label, or that opens with a parenthesised label whose rest names no
    // other one ("(B) inherited", but not "(B) or (C)?").
    static readonly Regex LoneLetter = new(
        @"^(?:answer\s*:\s*)?(?:\(\s*(?<l>[A-Za-z])\s*\)(?!.*\(\s*[A-Za-z]\s*\)).*|(?<l>[A-Za-z])\.?)$",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant | RegexOptions.Singleline);

    /// <summary>The label the response names, spelled exactly as in <paramref name="labels"/>, or null.</summary>
    public static string? Extract(string text, IReadOnlyList<string> labels)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (labels.Count == 0) throw new ArgumentException("no labels", nameof(labels));
        int split = text.IndexOf(ResponseSplit, StringComparison.Ordinal);
        string response = (split >= 0 ? text[(split + ResponseSplit.Length)..] : text).Trim();
        return labels.All(IsLetter) ? ExtractLetter(response, labels) : ExtractWord(response, labels);
    }

    static bool IsLetter(string label) => label.Length == 1 && char.IsAsciiLetter(label[0]);

    static string? ExtractLetter(string response, IReadOnlyList<string> labels)
    {
        foreach (Match cue in Cue.Matches(response))
        {
            var m = LetterAfterCue.Match(response, cue.Index + cue.Length);
            if (m.Success && Find(labels, m.Groups["l"].Value) is string label) return label;
        }
        var lone = LoneLetter.Match(response);
        return lone.Success ? Find(labels, lone.Groups["l"].Value) : null;
    }

    static string? ExtractWord(string response, IReadOnlyList<string> labels)
    {
        // Longest first, so "not_equivalent" is tried before "equivalent" at the same position.
        var ordered = labels.OrderByDescending(l => l.Length).ToList();
        string alternation = string.Join("|", ordered.Select((l, i) => $"(?<w{i}>{WordPattern(l)})"));
        var word = new Regex($@"(?<![A-Za-z0-9_])(?:{alternation})(?![A-Za-z0-9_])",
            RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
        string LabelOf(Match m) => ordered[Enumerable.Range(0, ordered.Count).First(i => m.Groups[$"w{i}"].Success)];

        foreach (Match cue in Cue.Matches(response))
        {
            var m = word.Match(response, cue.Index + cue.Length);
            if (m.Success && m.Index == cue.Index + cue.Length) return LabelOf(m);
        }
        var named = word.Matches(response).Select(LabelOf).Distinct().ToList();
        return named.Count == 1 ? named[0] : null;
    }

    // "not_entailment" also matches "not entailment" and "not-entailment".
    static string WordPattern(string label) =>
        string.Join(@"[\s_-]+", label.Split('_', StringSplitOptions.RemoveEmptyEntries).Select(Regex.Escape));

    static string? Find(IReadOnlyList<string> labels, string letter) =>
        labels.FirstOrDefault(l => string.Equals(l, letter, StringComparison.OrdinalIgnoreCase));
}
