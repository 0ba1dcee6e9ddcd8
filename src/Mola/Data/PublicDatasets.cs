using System.Text.Json;
using System.Text.Json.Nodes;

namespace Mola.Data;

/// <summary>
/// The six public benchmark data sets, as the Hugging Face hub ships them (the columns of its Parquet files and
/// JSON exports) and as their authors released them (ScienceQA's <c>problems.json</c> with <c>pid_splits.json</c>,
/// CommonsenseQA's and OpenBookQA's JSON Lines, GLUE's tab-separated files), turned into our records by
/// docs/BENCHMARKS.md's rules: <c>instruction</c>, <c>input</c> (empty), <c>output</c> (<c>Answer: The answer is X.</c>)
/// and <c>answer</c>, plus the data set's own descriptive columns (ScienceQA's <c>subject</c>, <c>topic</c>, ...) as
/// they are. An original release's row is first rewritten into the hub's row, as the hub's loading script does, so
/// both give the same records.
/// </summary>
public static class PublicDatasets
{
    sealed record Task(string Name, string Hub, string[] Columns, string[] Extras, Func<Row, JsonObject?> Convert, Original[] Originals);

    /// <summary>An original release's file: <paramref name="Matches"/> recognises it by its content, <paramref name="ToHub"/>
    /// rewrites a row into the hub's columns; <paramref name="Reread"/> reads the file again where its first line is
    /// data rather than a header (CoLA's training files).</summary>
    sealed record Original(string Describes, Func<TableData, bool> Matches, Func<TableRow, JsonObject> ToHub, Func<TableData, TableData>? Reread = null);

    static readonly string[] GlueExtras = ["idx"];

    static readonly string[] ColaColumns = ["source", "label", "original_mark", "sentence"];

    static readonly Task[] Tasks =
    [
        new("scienceqa", "derek-thomas/ScienceQA", ["image", "question", "choices", "answer", "hint"],
            ["task", "grade", "subject", "topic", "category", "skill", "pid"], ScienceQa,
            [new("ScienceQA's problems.json (pid to problem, with \"split\")",
                t => t.Format == TableFormat.JsonKeyed && Has(t, "question", "choices", "answer"), ScienceQaProblem)]),
        new("commonsenseqa", "tau/commonsense_qa", ["question", "choices", "answerKey"], ["id", "question_concept"], CommonsenseQa,
            [new("CommonsenseQA's JSON Lines (\"question\": {\"stem\", \"choices\", \"question_concept\"})",
                t => t.Format == TableFormat.JsonRows && Has(t, "id", "question") && !Has(t, "choices"), r => Nested(r, "question", "question_concept"))]),
        new("openbookqa", "allenai/openbookqa", ["question_stem", "choices", "answerKey"], ["id", "fact1", "humanScore", "clarity"], OpenBookQa,
            [new("OpenBookQA's JSON Lines (\"question\": {\"stem\", \"choices\"})",
                t => t.Format == TableFormat.JsonRows && Has(t, "id", "question") && !Has(t, "question_stem"), r => Nested(r, "question_stem", null))]),
        new("mrpc", "nyu-mll/glue mrpc", ["sentence1", "sentence2", "label"], GlueExtras,
            r => Glue(r, ["not_equivalent", "equivalent"], "Do the two sentences mean the same thing?",
                $"Sentence 1: {r.String("sentence1")}\nSentence 2: {r.String("sentence2")}\n"),
            [new("the MSR paraphrase corpus' msr_paraphrase_*.txt or GLUE's MRPC/*.tsv (Quality, #1 ID, #2 ID, #1 String, #2 String)",
                t => t.Format == TableFormat.Tsv && Has(t, "#1 String", "#2 String"),
                r => GlueRow(r, GlueLabel(r, "Quality", null), ("sentence1", "#1 String"), ("sentence2", "#2 String")))]),
        new("cola", "nyu-mll/glue cola", ["sentence", "label"], GlueExtras,
            r => Glue(r, ["unacceptable", "acceptable"], "Is the sentence grammatically acceptable?", $"Sentence: {r.String("sentence")}\n"),
            [new("CoLA's in_domain_train.tsv and the like (no header: source, label, original mark, sentence)",
                t => t.Format == TableFormat.Tsv && t.Columns.Count == 4 && t.Columns[1] is "0" or "1",
                r => GlueRow(r, GlueLabel(r, "label", null), ("sentence", "sentence")), t => TableFile.ReadTsv(t.Path, ColaColumns)),
             new("GLUE's CoLA/test.tsv (index, sentence)",
                t => t.Format == TableFormat.Tsv && t.Columns.SequenceEqual(["index", "sentence"]), r => GlueRow(r, -1, ("sentence", "sentence")))]),
        new("rte", "nyu-mll/glue rte", ["sentence1", "sentence2", "label"], GlueExtras,
            r => Glue(r, ["entailment", "not_entailment"], "Does the premise entail the hypothesis?",
                $"Premise: {r.String("sentence1")}\nHypothesis: {r.String("sentence2")}\n"),
            [new("GLUE's RTE/train.tsv, dev.tsv or test.tsv (index, sentence1, sentence2, label)",
                t => t.Format == TableFormat.Tsv && Has(t, "index", "sentence1", "sentence2"),
                r => GlueRow(r, GlueLabel(r, "label", ["entailment", "not_entailment"]), ("sentence1", "sentence1"), ("sentence2", "sentence2")))]),
    ];

    public static IReadOnlyList<string> Names { get; } = Tasks.Select(t => t.Name).ToList();

    /// <summary>What converting gave: the records, and how many rows the rules leave out (ScienceQA's questions with an
    /// image, hidden test labels).</summary>
    public sealed record Result(List<JsonObject> Records, int Skipped);

    /// <summary>Converts the rows of <paramref name="paths"/> (each Parquet, JSON, JSON Lines or tab-separated text,
    /// told apart by content) as the data set <paramref name="task"/>. <paramref name="split"/> picks one split of a file
    /// that holds them all (ScienceQA's problems.json: train, val, test, or any list of a pid_splits.json among
    /// <paramref name="paths"/>, which then also gives the order); any other file is one split already.</summary>
    public static Result Convert(string task, IReadOnlyList<string> paths, string? split = null)
    {
        var t = Tasks.FirstOrDefault(x => x.Name == task.ToLowerInvariant())
            ?? throw new MolaException($"unknown data set \"{task}\" (expected one of {string.Join(", ", Names)})");
        var tables = paths.Select(TableFile.Read).ToList();
        var index = tables.Where(x => x.Format == TableFormat.JsonLists).ToList();
        if (index.Count > 1) throw new MolaException($"{index[1].Path}: a second split index (after {index[0].Path}); give one pid_splits.json");
        if (index.Count == 1 && t.Name != "scienceqa")
            throw new MolaException($"{index[0].Path}: a split index (a JSON object of id lists, as ScienceQA's pid_splits.json), not {t.Hub} rows");
        var records = new List<JsonObject>();
        int skipped = 0;
        foreach (var table in tables.Where(x => x.Format != TableFormat.JsonLists))
        {
            var (rows, keyed) = Rows(t, table);
            if (keyed) rows = ScienceQaSplit(table, rows, split, index.Count == 1 ? index[0] : null);
            else if (split is not null)
                throw new MolaException(n => $"{n("split")} {split}: {table.Path} is one split already (only ScienceQA's problems.json holds several)");
            foreach (var (where, obj) in rows)
            {
                var record = t.Convert(new Row(obj, where));
                if (record is null) { skipped++; continue; }
                foreach (string extra in t.Extras)
                    if (obj[extra] is JsonValue v) record[extra] = v.DeepClone();
                records.Add(record);
            }
        }
        if (index.Count == 1 && tables.All(x => x.Format != TableFormat.JsonKeyed))
            throw new MolaException($"{index[0].Path}: a split index without its problems.json");
        return new Result(records, skipped);
    }

    /// <summary>The table's rows in the hub's columns, and whether they are keyed (ScienceQA's problems.json); a file that
    /// is neither the hub's layout nor an original release's is refused naming what it lacks.</summary>
    static (IEnumerable<(string, JsonObject)> Rows, bool Keyed) Rows(Task t, TableData table)
    {
        // The hub ships Parquet and JSON rows; tab-separated text and keyed JSON are original releases.
        if (table.Format is TableFormat.Parquet or TableFormat.JsonRows && t.Columns.All(c => table.Columns.Contains(c)))
            return (table.Rows.Select(r => (r.Where, r.Values)), false);
        if (t.Originals.FirstOrDefault(o => o.Matches(table)) is { } original)
        {
            var read = original.Reread?.Invoke(table) ?? table;
            return (read.Rows.Select(r => (r.Where, original.ToHub(r))), table.Format == TableFormat.JsonKeyed);
        }
        var missing = t.Columns.Where(c => !table.Columns.Contains(c)).ToList();
        string has = table.Columns.Count == 0 ? "no rows" : table.Format == TableFormat.Tsv
            ? $"a first line of {string.Join(", ", table.Columns.Select(c => $"\"{Short(c)}\""))}"
            : string.Join(", ", table.Columns);
        throw new MolaException($"{table.Path}: not {t.Hub} as the hub ships it: no column{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing.Select(m => $"\"{m}\""))} " +
            $"(expected {string.Join(", ", t.Columns)}, or {string.Join(", or ", t.Originals.Select(o => o.Describes))}; the file has {has})");
    }

    static string Short(string s) => s.Length <= 30 ? s : s[..27] + "...";

    static bool Has(TableData t, params string[] columns) => columns.All(t.Columns.Contains);

    /// <summary>One split of problems.json: the ids pid_splits.json lists for it, in its order (the hub's), or without an
    /// index the problems whose own "split" is it, in the file's order.</summary>
    static IEnumerable<(string, JsonObject)> ScienceQaSplit(TableData table, IEnumerable<(string Where, JsonObject Row)> rows, string? split, TableData? index)
    {
        string names = index is null ? "train, val, test" : string.Join(", ", index.Lists.Keys);
        if (split is null)
            throw new MolaException(n => $"{table.Path}: ScienceQA's problems.json holds every split; choose one with {n("split")} ({names})");
        if (index is null)
        {
            var chosen = rows.Where(r => r.Row["split"] is JsonValue v && v.GetValueKind() == JsonValueKind.String && v.GetValue<string>() == split).ToList();
            if (chosen.Count == 0)
            {
                var found = rows.Select(r => r.Row["split"] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : null)
                    .OfType<string>().Distinct().Order(StringComparer.Ordinal);
                throw new MolaException(n => $"{n("split")} {split}: no problem of {table.Path} has \"split\": \"{split}\" (its splits: {string.Join(", ", found)})");
            }
            return chosen;
        }
        if (!index.Lists.TryGetValue(split, out var ids))
            throw new MolaException(n => $"{n("split")} {split}: {index.Path} has no list \"{split}\" (it has {names})");
        var byKey = rows.ToDictionary(r => r.Row["pid"]!.GetValue<string>());
        return ids.Select(id => byKey.TryGetValue(id, out var r) ? r
            : throw new MolaException($"{index.Path}: \"{split}\" lists pid \"{id}\", which {table.Path} does not have"));
    }

    /// <summary>A problem of problems.json in the hub's columns: the same names, the image a file name or null, the pid kept.</summary>
    static JsonObject ScienceQaProblem(TableRow r)
    {
        var row = (JsonObject)r.Values.DeepClone();
        if (row["image"] is JsonValue v && v.GetValueKind() == JsonValueKind.String && v.GetValue<string>().Length == 0) row["image"] = null;
        row["pid"] = r.Key;
        return row;
    }

    /// <summary>A CommonsenseQA / OpenBookQA line in the hub's columns (as the hub's loading scripts rewrite it): the
    /// question object's stem (and concept) flattened, its list of {label, text} choices turned into lists; a missing
    /// answerKey (CommonsenseQA's test file) is empty, a hidden label.</summary>
    static JsonObject Nested(TableRow r, string stemColumn, string? conceptColumn)
    {
        var row = new Row(r.Values, r.Where);
        if (r.Values["question"] is not JsonObject q)
            throw row.Invalid($"key \"question\": expected an object of \"stem\" and \"choices\", got {JsonFile.Describe(r.Values["question"])}");
        var hub = (JsonObject)r.Values.DeepClone();
        hub.Remove("question");
        var inner = new Row(q, $"{r.Where}: key \"question\"");
        hub[stemColumn] = inner.String("stem");
        if (conceptColumn is not null) hub[conceptColumn] = inner.String("question_concept");
        if (q["choices"] is not JsonArray choices || choices.Any(c => c is not JsonObject))
            throw inner.Invalid($"key \"choices\": expected a list of {{\"label\", \"text\"}} objects, got {JsonFile.Describe(q["choices"])}");
        var labels = new JsonArray();
        var texts = new JsonArray();
        for (int i = 0; i < choices.Count; i++)
        {
            var c = new Row((JsonObject)choices[i]!, $"{r.Where}: key \"question.choices[{i}]\"");
            labels.Add(c.String("label"));
            texts.Add(c.String("text"));
        }
        hub["choices"] = new JsonObject { ["label"] = labels, ["text"] = texts };
        hub["answerKey"] ??= "";
        return hub;
    }

    /// <summary>A GLUE line in the hub's columns: the sentences, the label's index (-1: none, a hidden test label) and
    /// idx, the line's position among the file's rows (as the hub's script numbers them).</summary>
    static JsonObject GlueRow(TableRow r, long label, params (string Hub, string Column)[] sentences)
    {
        var hub = new JsonObject();
        foreach (var (name, column) in sentences) hub[name] = r.Values[column]?.DeepClone();
        hub["label"] = label;
        hub["idx"] = r.Index;
        return hub;
    }

    /// <summary>A tab-separated label: a class index (<c>0</c>, <c>1</c>) or, with <paramref name="names"/>, a class
    /// name; a file without the column has hidden labels (-1).</summary>
    static long GlueLabel(TableRow r, string column, string[]? names)
    {
        if (r.Values[column] is null) return -1;
        string text = r.Values[column]!.GetValue<string>();
        int label = names is null ? (text is "0" or "1" ? text[0] - '0' : -2) : Array.IndexOf(names, text);
        return label >= 0 ? label : throw new MolaException(
            $"{r.Where}: column \"{column}\": expected {(names is null ? "0 or 1" : string.Join(" or ", names))}, got \"{Short(text)}\"");
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

    static JsonObject? CommonsenseQa(Row r) => MultipleChoice(r, "question", "ABCDE");

    static JsonObject? OpenBookQa(Row r) => MultipleChoice(r, "question_stem", "ABCD");

    static JsonObject? MultipleChoice(Row r, string questionColumn, string letters)
    {
        var (labels, texts) = r.Choices("choices");
        string key = r.String("answerKey");
        if (key.Length == 0) return null;   // a hidden test label (CommonsenseQA's test split)
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
