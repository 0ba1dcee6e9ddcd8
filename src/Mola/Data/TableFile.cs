using System.Collections;
using System.Text.Json.Nodes;
using Parquet;
using Parquet.Serialization;

namespace Mola.Data;

/// <summary>
/// The rows of a data set as the Hugging Face hub ships it: a Parquet file (read a row group at a time, with
/// Parquet.Net) or its JSON / JSON Lines export. Every row is a JSON object whatever the source: Parquet structs
/// become objects, lists arrays, binary values (ScienceQA's image bytes) a short placeholder string.
/// </summary>
public static class TableFile
{
    /// <summary>Rows with where each came from (<c>FILE row N</c>, <c>FILE:LINE</c>), and the file's column names.</summary>
    public static (IReadOnlyList<string> Columns, IEnumerable<(string Where, JsonObject Row)> Rows) Read(string path)
    {
        if (!File.Exists(path)) throw new MolaException($"{path}: not found");
        if (path.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase)) return ReadParquet(path);
        var rows = Jsonl.ReadObjects(path).Select(r => ($"{path}:{r.Line}", r.Obj));
        // JSON rows name their columns themselves; the first row stands for the file.
        var first = rows.FirstOrDefault();
        IReadOnlyList<string> columns = first.Obj is null ? [] : first.Obj.Select(kv => kv.Key).ToList();
        return (columns, rows);
    }

    static (IReadOnlyList<string>, IEnumerable<(string, JsonObject)>) ReadParquet(string path)
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
        return (columns, Rows(path, groups));
    }

    static IEnumerable<(string, JsonObject)> Rows(string path, int groups)
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
                row++;
                var obj = new JsonObject();
                foreach (var (key, value) in values) obj[key] = ToJson(value);
                yield return ($"{path} row {row}", obj);
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
