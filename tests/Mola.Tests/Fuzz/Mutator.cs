using System.Text;
using System.Text.RegularExpressions;

namespace Mola.Tests.Fuzz;

/// <summary>
/// A seeded mutator of valid inputs: a case is fully determined by its seed, so a failure is replayed by its
/// number. It mixes byte damage (flips, cuts, repeats, bytes that matter to JSON and UTF-8) with token-level edits
/// of JSON text (a number, string or literal swapped for another kind of value, a key repeated), since most
/// byte damage only breaks the syntax and never reaches the readers' checks of types and ranges.
/// </summary>
sealed partial class Mutator(int seed)
{
    readonly Random _random = new(seed);

    // Bytes that steer a JSON parser or a UTF-8 decoder somewhere else.
    static readonly byte[] SpecialBytes = "{}[],:\"\\-+.0123456789eE \n\t"u8.ToArray().Concat(new byte[] { 0, 0x7F, 0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xED, 0xF0, 0xF4, 0xFF }).ToArray();

    // Values of every JSON kind, including those that parse but fit no reader's type: huge, negative, fractional,
    // infinite once parsed (1e400), empty, a lone surrogate, nested.
    static readonly string[] Values =
    [
        "null", "true", "false", "0", "-1", "1", "2", "0.5", "-0.0", "1e400", "-1e400", "1e-400", "2147483647", "2147483648",
        "-2147483649", "9223372036854775807", "18446744073709551616", "1e12", "3.0", "\"\"", "\"x\"", "\"\\ud800\"", "\"\\udc00x\"",
        "\"\\u0000\"", "\"llama\"", "\"gemma\"", "\"F32\"", "\"BF16\"", "\"MOLA\"", "\"LORA\"", "\"q_proj\"", "\"{instruction}\"",
        "\"{input}\"", "\"{\"", "\"}\"", "[]", "{}", "[1]", "[-1, 2]", "[0, 0]", "[1, 2, 3]", "[\"a\"]", "{\"a\": 1}", "[[]]", "NaN",
    ];

    [GeneratedRegex("\"(?:[^\"\\\\]|\\\\.)*\"|-?\\d+(?:\\.\\d+)?(?:[eE][-+]?\\d+)?|true|false|null")]
    private static partial Regex JsonToken();

    [GeneratedRegex("\"(?:[^\"\\\\]|\\\\.)*\"\\s*:")]
    private static partial Regex JsonKey();

    public int Next(int max) => _random.Next(max);

    public T Pick<T>(IReadOnlyList<T> items) => items[_random.Next(items.Count)];

    /// <summary>One to four edits of a JSON text (as UTF-8 bytes).</summary>
    public byte[] MutateJson(byte[] utf8)
    {
        int edits = 1 + _random.Next(4);
        for (int i = 0; i < edits; i++)
        {
            utf8 = _random.Next(10) switch
            {
                < 5 => ReplaceToken(utf8),
                5 => RepeatKey(utf8),
                _ => MutateBytes(utf8, 0, utf8.Length),
            };
        }
        return utf8;
    }

    /// <summary>One to four byte-level edits inside [<paramref name="from"/>, <paramref name="to"/>).</summary>
    public byte[] MutateBytes(byte[] data, int from, int to)
    {
        var b = data.ToList();
        int edits = 1 + _random.Next(4);
        for (int i = 0; i < edits; i++)
        {
            to = Math.Min(to, b.Count);
            if (to <= from) { b.Add(Pick(SpecialBytes)); continue; }
            int at = from + _random.Next(to - from);
            switch (_random.Next(7))
            {
                case 0: b[at] ^= (byte)(1 << _random.Next(8)); break;
                case 1: b[at] = Pick(SpecialBytes); break;
                case 2: b.Insert(at, Pick(SpecialBytes)); break;
                case 3: b.RemoveRange(at, Math.Min(1 + _random.Next(8), b.Count - at)); break;
                case 4:
                    int len = Math.Min(1 + _random.Next(16), b.Count - at);
                    b.InsertRange(at, b.GetRange(at, len));
                    break;
                case 5: b.RemoveRange(at, b.Count - at); break;   // truncated
                default: b.InsertRange(at, Encoding.UTF8.GetBytes(Pick(Values))); break;
            }
        }
        return b.ToArray();
    }

    byte[] ReplaceToken(byte[] utf8)
    {
        string text = Encoding.UTF8.GetString(utf8);
        var tokens = JsonToken().Matches(text);
        if (tokens.Count == 0) return MutateBytes(utf8, 0, utf8.Length);
        var t = tokens[_random.Next(tokens.Count)];
        // A key stays a key (replacing it with a number would only break the syntax); it becomes another string.
        bool isKey = text.AsSpan(t.Index + t.Length).TrimStart().StartsWith(":");
        string replacement = isKey ? Pick(Values.Where(v => v.StartsWith('"')).ToList()) : Pick(Values);
        return Encoding.UTF8.GetBytes(text[..t.Index] + replacement + text[(t.Index + t.Length)..]);
    }

    // "a": 1  ->  "a": 1, "a": <value>   (the duplicate-key case, which a byte edit almost never produces)
    byte[] RepeatKey(byte[] utf8)
    {
        string text = Encoding.UTF8.GetString(utf8);
        var keys = JsonKey().Matches(text);
        if (keys.Count == 0) return MutateBytes(utf8, 0, utf8.Length);
        var k = keys[_random.Next(keys.Count)];
        return Encoding.UTF8.GetBytes(text[..k.Index] + k.Value + " " + Pick(Values) + ", " + text[k.Index..]);
    }
}
