using System.Collections;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Parquet;
using Parquet.Serialization;

namespace Mola.Data;

/// <summary>How a data file holds its rows, told from its content (not its name).</summary>
public enum TableFormat
{
    /// <summary>Parquet (starts with <c>PAR1</c>), as the Hugging Face hub ships data sets.</summary>
    Parquet,
    /// <summary>JSON Lines or a JSON array of objects: one row each.</summary>
    JsonRows,
    /// <summary>One JSON object of objects, a row per key (ScienceQA's <c>problems.json</c>: pid to problem).</summary>
    JsonKeyed,
    /// <summary>One JSON object of lists of strings (ScienceQA's <c>pid_splits.json</c>: split to pids); no rows.</summary>
    JsonLists,
    /// <summary>Tab-separated text (GLUE's original <c>.tsv</c> / <c>.txt</c> files), fields taken as they are (no quoting).</summary>
    Tsv,
}

/// <summary>One row: where it came from (<c>FILE row N</c>, <c>FILE:LINE</c>, <c>FILE: key "K"</c>), its key in a
/// keyed JSON file, its 0-based position among the file's rows, and its values.</summary>
public readonly record struct TableRow(string Where, string? Key, long Index, JsonObject Values);

/// <summary>A data file's rows and column names (for JSON, the first row's; for tab-separated text, its first line's
/// fields).</summary>
public sealed record TableData(string Path, TableFormat Format, IReadOnlyList<string> Columns, IEnumerable<TableRow> Rows)
{
    /// <summary>A <see cref="TableFormat.JsonLists"/> file's lists, by key.</summary>
    public IReadOnlyDictionary<string, List<string>> Lists { get; init; } = new Dictionary<string, List<string>>();
}

/// <summary>
/// The rows of a data set as its publishers ship it: a Parquet file (read a row group at a time, with Parquet.Net),
/// JSON Lines / a JSON array, a JSON object keyed by id, or tab-separated text. Every row is a JSON object whatever the
/// source: Parquet structs become objects, lists arrays, binary values (ScienceQA's image bytes) a short placeholder
/// string, tab-separated fields strings.
/// </summary>
public static class TableFile
{
    static readonly byte[] ParquetMagic = "PAR1"u8.ToArray();

    public static TableData Read(string path)
    {
        if (!File.Exists(path)) throw new MolaException($"{path}: not found");
        var head = new byte[4096];
        int n;
        using (var s = InputFile.OpenRead(path)) n = s.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        var start = head.AsSpan(0, n);
        if (start.StartsWith(ParquetMagic)) return ReadParquet(path);
        if (path.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase))
            throw new MolaException($"{path}: not a Parquet file (it does not start with PAR1)");
        if (start.StartsWith(Encoding.UTF8.Preamble)) start = start[3..];
        int first = start.IndexOfAnyExcept(" \t\r\n"u8);
        if (first >= 0 && start[first] == (byte)'{' && SingleJsonObject(path) is { } whole) return Keyed(path, whole);
        if (first >= 0 && start[first] is (byte)'{' or (byte)'[')
        {
            var rows = Jsonl.ReadObjects(path).Select((r, i) => new TableRow($"{path}:{r.Line}", null, i, r.Obj));
            // JSON rows name their columns themselves; the first row stands for the file.
            var firstRow = rows.FirstOrDefault();
            IReadOnlyList<string> columns = firstRow.Values is null ? [] : firstRow.Values.Select(kv => kv.Key).ToList();
            return new TableData(path, TableFormat.JsonRows, columns, rows);
        }
        return ReadTsv(path, null);
    }

    /// <summary>The file's one JSON object when the whole file is a single object (not JSON Lines); else null.</summary>
    static JsonObject? SingleJsonObject(string path)
    {
        byte[] bytes = InputFile.ReadAllBytes(path);
        var span = bytes.AsSpan();
        if (span.StartsWith(Encoding.UTF8.Preamble)) span = span[3..];
        try
        {
            var reader = new Utf8JsonReader(span, new JsonReaderOptions { AllowMultipleValues = true });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return null;
            reader.Skip();
            if (reader.Read()) return null;   // a second value: JSON Lines
        }
        catch (JsonException) { return null; }   // the line-by-line reader names the line
        return JsonFile.ParseObject(bytes, path, "");
    }

    /// <summary>An object of objects is a table keyed by id; an object of string lists an index (pid_splits.json); anything
    /// else is a file of one JSON row.</summary>
    static TableData Keyed(string path, JsonObject whole)
    {
        if (whole.Count > 0 && whole.All(kv => kv.Value is JsonObject))
        {
            var columns = ((JsonObject)whole.First().Value!).Select(kv => kv.Key).ToList();
            var rows = whole.Select((kv, i) => new TableRow($"{path}: key \"{kv.Key}\"", kv.Key, i, (JsonObject)kv.Value!));
            return new TableData(path, TableFormat.JsonKeyed, columns, rows);
        }
        if (whole.Count > 0 && whole.All(kv => kv.Value is JsonArray a && a.All(x => x is JsonValue v && v.GetValueKind() == JsonValueKind.String)))
            return new TableData(path, TableFormat.JsonLists, [], [])
            {
                Lists = whole.ToDictionary(kv => kv.Key, kv => kv.Value!.AsArray().Select(x => x!.GetValue<string>()).ToList()),
            };
        return new TableData(path, TableFormat.JsonRows, whole.Select(kv => kv.Key).ToList(), [new TableRow($"{path}:1", null, 0, whole)]);
    }

    /// <summary>Tab-separated text as Python's <c>csv</c> reads it with <c>delimiter="\t", quoting=QUOTE_NONE</c> (as the
    /// Hugging Face GLUE script does): every field as written, quotes included. With <paramref name="names"/> every line
    /// is a row of those columns; without, the first line names the columns. A line with another number of fields is
    /// an error naming it.</summary>
    public static TableData ReadTsv(string path, IReadOnlyList<string>? names)
    {
        var lines = TextLines(path).Where(l => l.Text.Length > 0);
        var header = lines.FirstOrDefault();
        var columns = names ?? (header.Text is null ? [] : header.Text.Split('\t'));
        return new TableData(path, TableFormat.Tsv, columns, TsvRows(path, names is null ? lines.Skip(1) : lines, columns));
    }

    static IEnumerable<TableRow> TsvRows(string path, IEnumerable<(int Line, string Text)> lines, IReadOnlyList<string> columns)
    {
        long index = 0;
        foreach (var (line, text) in lines)
        {
            var fields = text.Split('\t');
            if (fields.Length != columns.Count)
                throw new MolaException($"{path}:{line}: expected {columns.Count} tab-separated fields ({string.Join(", ", columns)}), got {fields.Length}");
            var values = new JsonObject();
            for (int i = 0; i < fields.Length; i++) values[columns[i]] = fields[i];
            yield return new TableRow($"{path}:{line}", null, index++, values);
        }
    }

    /// <summary>The file's lines, numbered from 1, without line ends (LF or CRLF) and without a leading byte-order mark
    /// (the MSR paraphrase files have one); invalid UTF-8 is an error naming the line.</summary>
    static IEnumerable<(int Line, string Text)> TextLines(string path)
    {
        var strict = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        using var reader = new StreamReader(path, strict, detectEncodingFromByteOrderMarks: false);
        int n = 0;
        while (true)
        {
            string? text;
            try { text = reader.ReadLine(); }
            catch (DecoderFallbackException) { throw new MolaException($"{path}:{n + 1}: not valid UTF-8 text (save the file as UTF-8)"); }
            if (text is null) yield break;
            n++;
            yield return (n, n == 1 ? text.TrimStart('\uFEFF') : text);
        }
    }

    static TableData ReadParquet(string path)
    {
        int groups;
        IReadOnlyList<string> columns;
        try
        {
            using var stream = InputFile.OpenRead(path);
            var reader = ParquetReader.CreateAsync(stream).GetAwaiter().GetResult();   // holds nothing beyond the stream
            groups = reader.RowGroupCount;
            columns = reader.Schema.Fields.Select(f => f.Name).ToList();
        }
        catch (Exception e) when (e is IOException or InvalidDataException or NotSupportedException or InvalidOperationException or ArgumentException)
        {
            throw new MolaException($"{path}: not a Parquet file Parquet.Net can read ({e.Message.TrimEnd('.')})");
        }
        return new TableData(path, TableFormat.Parquet, columns, ParquetRows(path, groups));
    }

    static IEnumerable<TableRow> ParquetRows(string path, int groups)
    {
        long row = 0;
        for (int g = 0; g < groups; g++)
        {
            IList<Dictionary<string, object>> data;
            try
            {
                using var stream = InputFile.OpenRead(path);
                data = ParquetSerializer.DeserializeUntypedAsync(stream, null, g).GetAwaiter().GetResult().Data;
            }
            catch (Exception e) when (e is IOException or InvalidDataException or NotSupportedException or InvalidOperationException or ArgumentException)
            {
                throw new MolaException($"{path}: row group {g} cannot be read ({e.Message.TrimEnd('.')})");
            }
            foreach (var values in data)
            {
                var obj = new JsonObject();
                foreach (var (key, value) in values) obj[key] = ToJson(value);
                yield return new TableRow($"{path} row {row + 1}", null, row, obj);
                row++;
            }
        }
    }

    static JsonNode? ToJson(object? value) => value switch
    {
        null => null,
        string s => JsonValue.Create(s),
        bool b => JsonValue.Create(b),
        byte[] bytes => JsonValue.Create($"<{bytes.Length} bytes>"),
        ReadOnlyMemory<byte> bytes => JsonValue.Create($"<{bytes.Length} bytes>"),
        ReadOnlyMemory<char> text => JsonValue.Create(text.ToString()),
        sbyte or byte or short or ushort or int or uint or long => JsonValue.Create(Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture)),
        float or double or decimal => JsonValue.Create(Convert.ToDouble(value, System.Globalization.CultureInfo.InvariantCulture)),
        IDictionary d => new JsonObject(d.Keys.Cast<object>().Select(k => KeyValuePair.Create(k.ToString()!, ToJson(d[k])))),
        IEnumerable list => new JsonArray(list.Cast<object?>().Select(ToJson).ToArray()),
        _ => JsonValue.Create(value.ToString()),
    };
}
