using Mola.Data;
using Xunit;

namespace Mola.Tests;

public class InstructionRecordTests
{
    static string Write(string text, string name = "data.jsonl")
    {
        string path = Path.Combine(TestUtil.TempDir(), name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void ReadsJsonLinesWithOptionalInputAndAnswer()
    {
        string path = Write("""
            {"instruction": "Pick one.", "input": "A or B", "output": "The answer is B.", "answer": "B"}

            {"instruction": "Say hi.", "output": "hi", "extra": 3}
            {"instruction": "Say bye.", "input": null, "output": "bye"}
            """);
        var records = InstructionRecord.Load(path);
        Assert.Equal(3, records.Count);
        Assert.Equal(new InstructionRecord("Pick one.", "A or B", "The answer is B.", "B") { Line = 1 }, records[0]);
        Assert.Equal(new InstructionRecord("Say hi.", "", "hi") { Line = 3 }, records[1]);
        Assert.Equal(new InstructionRecord("Say bye.", "", "bye") { Line = 4 }, records[2]);
    }

    [Fact]
    public void ReadsAJsonArrayWithTheLineEachRecordStartsOn()
    {
        string path = Write("""

            [
              {"instruction": "a", "input": "", "output": "b"},
              {
                "instruction": "c",
                "output": "d"
              }
            ]
            """, "data.json");
        var records = InstructionRecord.Load(path);
        Assert.Equal(new[] { 3, 4 }, records.Select(r => r.Line));
        Assert.Equal("d", records[1].Output);
    }

    [Fact]
    public void MalformedLineIsNamed()
    {
        string path = Write("""
            {"instruction": "a", "output": "b"}
            {"instruction": "c", "output": "d"}
            {"instruction": "e", "output": }
            """);
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(path));
        Assert.StartsWith($"{path}:3: invalid JSON", e.Message);
    }

    [Fact]
    public void MalformedArrayItemIsNamedByLine()
    {
        string path = Write("[\n{\"instruction\": \"a\", \"output\": \"b\"},\n{\"instruction\": \"c\" \"output\": \"d\"}\n]", "data.json");
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(path));
        Assert.StartsWith($"{path}:3: invalid JSON", e.Message);
    }

    [Fact]
    public void ArrayItemThatIsNotAnObjectIsNamedByLine()
    {
        string path = Write("[\n{\"instruction\": \"a\", \"output\": \"b\"},\n\"oops\"\n]", "data.json");
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(path));
        Assert.StartsWith($"{path}:3: expected a JSON object", e.Message);
    }

    [Theory]
    [InlineData("{\"input\": \"x\", \"output\": \"y\"}", "missing field \"instruction\"")]
    [InlineData("{\"instruction\": \"x\", \"input\": \"y\"}", "missing field \"output\"")]
    [InlineData("{\"instruction\": \"x\", \"output\": null}", "missing field \"output\"")]
    [InlineData("{\"instruction\": \"x\", \"input\": 5, \"output\": \"y\"}", "key \"input\": expected a string, got 5")]
    public void MissingOrMistypedFieldIsNamedWithItsLine(string badLine, string what)
    {
        string path = Write("{\"instruction\": \"a\", \"output\": \"b\"}\n" + badLine + "\n");
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(path));
        Assert.StartsWith($"{path}:2: {what}", e.Message);
    }

    [Theory]
    [InlineData("{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": \"d\"}\n")]
    [InlineData("[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c\", \"output\": \"d\"}\n]")]
    public void AByteOrderMarkIsRead(string text)
    {
        // Written with a UTF-8 BOM, as editors on Windows do.
        string path = Path.Combine(TestUtil.TempDir(), "bom.jsonl");
        File.WriteAllText(path, text, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: true));
        Assert.Equal([0xEF, 0xBB, 0xBF], File.ReadAllBytes(path)[..3]);
        var records = InstructionRecord.Load(path);
        Assert.Equal(["a", "c"], records.Select(r => r.Instruction));
        Assert.Equal(text.StartsWith('[') ? [2, 3] : new[] { 1, 2 }, records.Select(r => r.Line));
    }

    [Fact]
    public void APrettyPrintedObjectSaysWhatTheFileMustLookLike()
    {
        string path = Write("{\n  \"instruction\": \"a\",\n  \"output\": \"b\"\n}\n");
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(path));
        Assert.StartsWith($"{path}:1: invalid JSON (", e.Message);
        Assert.EndsWith("; expected one JSON object per line (JSONL) or a JSON array of objects", e.Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TextThatIsNotUtf8IsNamedWithItsLine(bool array)
    {
        // Line 3 holds a Latin-1 'é' (0xE9), as a file saved in the wrong encoding would.
        var good = System.Text.Encoding.UTF8.GetBytes(array ? "[\n{\"instruction\": \"a\", \"output\": \"b\"},\n" : "{\"instruction\": \"a\", \"output\": \"b\"}\n\n");
        var bad = System.Text.Encoding.Latin1.GetBytes("{\"instruction\": \"caf\u00e9\", \"output\": \"b\"}" + (array ? "\n]" : "\n"));
        string path = Path.Combine(TestUtil.TempDir(), "latin1.jsonl");
        File.WriteAllBytes(path, [.. good, .. bad]);
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(path));
        Assert.Equal($"{path}:3: not valid UTF-8 text (save the file as UTF-8)", e.Message);
    }

    [Theory]
    [InlineData("{\"instruction\": \"a\", \"instruction\": \"b\", \"output\": \"c\"}", "data.jsonl:2: invalid JSON (", "instruction")]
    [InlineData("[\n {\"output\": \"x\", \"output\": \"y\", \"instruction\": \"z\"}]", "data.jsonl:3: invalid JSON (", "output")]
    [InlineData("{\"instruction\": \"\\ud800\", \"output\": \"c\"}", "data.jsonl:2: key \"instruction\": a string is not valid text", "")]
    public void DuplicateKeysAndLoneSurrogatesAreNamedWithTheirLine(string badLine, string start, string key)
    {
        string text = badLine.StartsWith('[') ? "\n" + badLine : "{\"instruction\": \"ok\", \"output\": \"ok\"}\n" + badLine;
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(Write(text)));
        Assert.Contains(start, e.Message);
        Assert.Contains(key, e.Message);
    }

    [Theory]
    [InlineData("")]
    [InlineData("\n  \n")]
    [InlineData("[ ]")]
    public void EmptyDataSetIsAnError(string text)
    {
        string path = Write(text);
        var e = Assert.Throws<MolaException>(() => InstructionRecord.Load(path));
        Assert.StartsWith($"{path}: no records", e.Message);
    }
}
