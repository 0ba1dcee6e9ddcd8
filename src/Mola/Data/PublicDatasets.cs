using System.Text.Json;
using System.Text.Json.Nodes;

namespace Mola.Data;

/// <summary>
/// The six public benchmark data sets, as the Hugging Face hub ships them (the columns of its Parquet files and
/// JSON exports), turned into our records by docs/BENCHMARKS.md's rules: <c>instruction</c>, <c>input</c> (empty),
/// <c>output</c> (<c>Answer: The answer is X.</c>) and <c>answer</c>, plus the data set's own descriptive columns
/// (ScienceQA's <c>subject</c>, <c>topic</c>, ...) as they are.
/// </summary>
public static class PublicDatasets
{
    sealed record Task(string Name, string Hub, string[] Columns, string[] Extras, Func<Row, JsonObject?> Convert);

    static readonly string[] GlueExtras = ["idx"];

    static readonly Task[] Tasks =
    [
        new("scienceqa", "derek-thomas/ScienceQA", ["image", "question", "choices", "answer", "hint"],
            ["task", "grade", "subject", "topic", "category", "skill"], ScienceQa),
        new("commonsenseqa", "tau/commonsense_qa", ["question", "choices", "answerKey"], ["id", "question_concept"], CommonsenseQa),
        new("openbookqa", "allenai/openbookqa", ["question_stem", "choices", "answerKey"], ["id"], OpenBookQa),
        new("mrpc", "nyu-mll/glue mrpc", ["sentence1", "sentence2", "label"], GlueExtras,
            r => Glue(r, ["not_equivalent", "equivalent"], "Do the two sentences mean the same thing?",
                $"Sentence 1: {r.String("sentence1")}\nSentence 2: {r.String("sentence2")}\n")),
        new("cola", "nyu-mll/glue cola", ["sentence", "label"], GlueExtras,
            r => Glue(r, ["unacceptable", "acceptable"], "Is the sentence grammatically acceptable?", $"Sentence: {r.String("sentence")}\n")),
        new("rte", "nyu-mll/glue rte", ["sentence1", "sentence2", "label"], GlueExtras,
            r => Glue(r, ["entailment", "not_entailment"], "Does the premise entail the hypothesis?",
                $"Premise: {r.String("sentence1")}\nHypothesis: {r.String("sentence2")}\n")),
    ];

    public static IReadOnlyList<string> Names { get; } = Tasks.Select(t => t.Name).ToList();

    /// <summary>What converting one file gave: the records, and how many rows the rules leave out (ScienceQA's
    /// questions with an image, GLUE's hidden test labels).</summary>
    public sealed record Result(List<JsonObject> Records, int Skipped);

    /// <summary>Converts the rows of <paramref name="path"/> (Parquet, JSON or JSONL) as the data set <paramref name="task"/>.</summary>
    public static Result Convert(string task, string path)
    {
        var t = Tasks.FirstOrDefault(x => x.Name == task.ToLowerInvariant())
            ?? throw new MolaException($"unknown data set \"{task}\" (expected one of {string.Join(", ", Names)})");
        var (columns, rows) = TableFile.Read(path);
        var missing = t.Columns.Where(c => !columns.Contains(c)).ToList();
        if (missing.Count > 0)
            throw new MolaException($"{path}: not {t.Hub} as the hub ships it: no column{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing.Select(m => $"\"{m}\""))} " +
                $"(expected {string.Join(", ", t.Columns)}; the file has {(columns.Count == 0 ? "no rows" : string.Join(", ", columns))})");
        var records = new List<JsonObject>();
        int skipped = 0;
        foreach (var (where, obj) in rows)
        {
            var record = t.Convert(new Row(obj, where));
            if (record is null) { skipped++; continue; }
            foreach (string extra in t.Extras)
                if (obj[extra] is JsonValue v) record[extra] = v.DeepClone();
            records.Add(record);
        }
        return new Result(records, skipped);
    }

    /// <summary>One row, whose typed reads name the row and column when the value is not what the data set holds.</summary>
    sealed class Row(JsonObject obj, string where)
    {
        public JsonNode? this[string column] => obj[column];

        MolaException Wrong(string column, string expected) =>
            new($"{where}: column \"{column}\": expected {expected}, got {JsonFile.Describe(obj[column])}");

        public string String(string column) => obj[column] is JsonValue v && v.GetValueKind() == JsonValueKind.String
            ? v.GetValue<string>() : throw Wrong(column, "a string");

        public long Integer(string column) => obj[column] is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out long n)
            ? n : obj[column] is JsonValue d && d.TryGetValue(out double x) && x == Math.Floor(x) ? (long)x : throw Wrong(column, "an integer");

        public List<string> Strings(string column, JsonNode? node = null, string? name = null)
        {
            node ??= obj[column];
            if (node is not JsonArray a || a.Any(x => x is not JsonValue v || v.GetValueKind() != JsonValueKind.String))
                throw Wrong(name ?? column, "a list of strings");
            return a.Select(x => x!.GetValue<string>()).ToList();
        }

        /// <summary>A struct column of parallel string lists (<c>choices.label</c>, <c>choices.text</c>).</summary>
        public (List<string> Labels, List<string> Texts) Choices(string column)
        {
            if (obj[column] is not JsonObject c || c["label"] is null || c["text"] is null)
                throw Wrong(column, "a struct of \"label\" and \"text\" lists");
            var labels = Strings(column, c["label"], column + ".label");
            var texts = Strings(column, c["text"], column + ".text");
            if (labels.Count != texts.Count) throw Wrong(column, $"as many labels as texts (labels {labels.Count}, texts {texts.Count})");
            return (labels, texts);
        }

        public MolaException Invalid(string message) => new($"{where}: {message}");
    }

    static JsonObject Record(string instruction, string label) => new()
    {
        ["instruction"] = instruction,
        ["input"] = "",
        ["output"] = $"Answer: The answer is {label}.",
        ["answer"] = label,
    };

    static string Options(IEnumerable<string> letters, IEnumerable<string> texts) =>
        string.Join(" ", letters.Zip(texts, (l, t) => $"({l}) {t}"));

    static JsonObject Choice(string context, string question, IEnumerable<string> letters, IEnumerable<string> texts, string answer) =>
        Record($"Context: {context}\nQuestion: {question}\nOptions: {Options(letters, texts)}\n", answer);

    /// <summary>ScienceQA: text-only questions (image null); options lettered A..; context the hint, "N/A" when empty.</summary>
    static JsonObject? ScienceQa(Row r)
    {
        // The hub's image is a struct of bytes and path; a question without one has it null (or both fields null).
        bool hasImage = r["image"] switch
        {
            null => false,
            JsonObject o => o["bytes"] is not null || o["path"] is not null,
            _ => true,
        };
        if (hasImage) return null;
        var choices = r.Strings("choices");
        if (choices.Count is < 2 or > 5) throw r.Invalid($"column \"choices\": expected 2 to 5 options, got {choices.Count}");
        long answer = r.Integer("answer");
        if (answer < 0 || answer >= choices.Count) throw r.Invalid($"column \"answer\": expected the index of a choice (0 to {choices.Count - 1}), got {answer}");
        string letters = "ABCDE"[..choices.Count];
        string hint = r["hint"] is null ? "" : r.String("hint").Trim();
        return Choice(hint.Length == 0 ? "N/A" : hint, r.String("question"), letters.Select(c => c.ToString()), choices, letters[(int)answer].ToString());
    }

    static JsonObject CommonsenseQa(Row r) => MultipleChoice(r, "question", "ABCDE");

    static JsonObject OpenBookQa(Row r) => MultipleChoice(r, "question_stem", "ABCD");

    static JsonObject MultipleChoice(Row r, string questionColumn, string letters)
    {
        var (labels, texts) = r.Choices("choices");
        string key = r.String("answerKey");
        if (!labels.Contains(key)) throw r.Invalid($"column \"answerKey\": expected one of the choices' labels ({string.Join(", ", labels)}), got \"{key}\"");
        if (labels.Any(l => l.Length != 1 || !letters.Contains(l)))
            throw r.Invalid($"column \"choices.label\": expected letters from {letters[0]} to {letters[^1]}, got {string.Join(", ", labels)}");
        return Choice("N/A", r.String(questionColumn), labels, texts, key);
    }

    /// <summary>GLUE: the label's class name; -1 (a hidden test label) is left out.</summary>
    static JsonObject? Glue(Row r, string[] names, string question, string body)
    {
        long label = r.Integer("label");
        if (label == -1) return null;
        if (label < 0 || label >= names.Length)
            throw r.Invalid($"column \"label\": expected {string.Join(" or ", names.Select((n, i) => $"{i} ({n})"))}, or -1 for a hidden label, got {label}");
        return Record($"{body}Question: {question}\nOptions: {string.Join(", ", names)}\n", names[label]);
    }
}

/// <summary>Writes converted records: a JSON array (<c>.json</c>) or JSON Lines (<c>.jsonl</c>), through a temporary
/// file moved into place, so an existing file is replaced whole or not at all.</summary>
public static class RecordFile
{
    static readonly JsonSerializerOptions Pretty = new() { WriteIndented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static void Write(string path, IReadOnlyList<JsonObject> records)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        string tmp = path + ".tmp";
        bool lines = path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase);
        using (var writer = new StreamWriter(tmp, false, new System.Text.UTF8Encoding(false)))
        {
            if (!lines) writer.Write('[');
            for (int i = 0; i < records.Count; i++)
            {
                if (!lines && i > 0) writer.Write(",\n");
                writer.Write(records[i].ToJsonString(Pretty));
                if (lines) writer.Write('\n');
            }
            if (!lines) writer.Write("]\n");
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Groups by the string value of <paramref name="column"/> (one file each; errors name the record lacking it).</summary>
    public static Dictionary<string, List<JsonObject>> SplitBy(IEnumerable<JsonObject> records, string column)
    {
        var groups = new SortedDictionary<string, List<JsonObject>>(StringComparer.Ordinal);
        int n = 0;
        foreach (var r in records)
        {
            n++;
            if (r[column] is not JsonValue v || v.GetValueKind() != JsonValueKind.String || v.GetValue<string>().Length == 0)
                throw new MolaException($"record {n}: no \"{column}\" to split by (the data set's records have {string.Join(", ", r.Select(kv => kv.Key))})");
            string key = v.GetValue<string>();
            if (!groups.TryGetValue(key, out var list)) groups[key] = list = [];
            list.Add(r);
        }
        return new Dictionary<string, List<JsonObject>>(groups);
    }

    /// <summary>A file name for a column value: letters, digits, '-' and '_' kept, anything else '-'.</summary>
    public static string FileName(string value) =>
        new(value.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '-').ToArray());
}
