using System.Text.Json;
using System.Text.Json.Nodes;
using Parquet.Schema;
using Parquet.Serialization;
using Xunit;

namespace Mola.Tests;

/// <summary>
/// <c>mola data</c> on small Parquet files written here with each data set's column schema as the Hugging Face hub
/// ships it (ScienceQA's image struct, CommonsenseQA's and OpenBookQA's choices struct of lists, GLUE's int64 label and
/// int32 idx), compared with records written out by hand from docs/BENCHMARKS.md's rules.
/// </summary>
public class DataCommandTests
{
    static string Write(string name, ParquetSchema schema, params Dictionary<string, object?>[] rows)
    {
        string path = Path.Combine(TestUtil.TempDir(), name);
        using (var stream = File.Create(path))
            ParquetSerializer.SerializeUntypedAsync(rows.Select(r => (IDictionary<string, object?>)Untyped(r)).ToList(), schema, stream)
                .GetAwaiter().GetResult();
        return path;
    }

    /// <summary>Values as Parquet.Net 6's untyped writer takes them inside lists and structs (memory, not strings and arrays).</summary>
    static Dictionary<string, object?> Untyped(Dictionary<string, object?> row) => row.ToDictionary(kv => kv.Key, kv => kv.Value switch
    {
        string[] list => list.Select(x => (ReadOnlyMemory<char>?)x.AsMemory()).ToArray(),
        byte[] bytes => (ReadOnlyMemory<byte>?)bytes.AsMemory(),
        Dictionary<string, object?> inner => Untyped(inner),
        var v => v,
    });

    static readonly ParquetSchema ScienceQaSchema = new(
        new StructField("image", new DataField<byte[]>("bytes"), new DataField<string>("path")),
        new DataField<string>("question"),
        new ListField("choices", new DataField<string>("item")),
        new DataField<sbyte?>("answer"),
        new DataField<string>("hint"),
        new DataField<string>("task"),
        new DataField<string>("grade"),
        new DataField<string>("subject"),
        new DataField<string>("topic"),
        new DataField<string>("category"),
        new DataField<string>("skill"),
        new DataField<string>("lecture"),
        new DataField<string>("solution"));

    internal static Dictionary<string, object?> ScienceQaRow(Dictionary<string, object?>? image, string question, string[] choices, sbyte answer, string hint, string subject, string topic) => new()
    {
        ["image"] = image,
        ["question"] = question,
        ["choices"] = choices,
        ["answer"] = answer,
        ["hint"] = hint,
        ["task"] = "closed choice",
        ["grade"] = "grade4",
        ["subject"] = subject,
        ["topic"] = topic,
        ["category"] = "Weather and climate around the world",
        ["skill"] = "Use climate data to make predictions",
        ["lecture"] = "A long lecture.",
        ["solution"] = "A long solution.",
    };

    static string ScienceQaFile() => Write("train-00000-of-00001.parquet", ScienceQaSchema,
        ScienceQaRow(null, "Which tense does the sentence use?\nMona will print her name.", ["future tense", "present tense", "past tense"], 0, "", "language science", "verbs"),
        ScienceQaRow(new() { ["bytes"] = new byte[] { 0x89, 0x50, 0x4e, 0x47 }, ["path"] = "image.png" }, "Which animal's feet are adapted for digging?", ["mole", "duck"], 0, "", "natural science", "adaptations"),
        ScienceQaRow(null, "Which is the warmest month?", ["January", "July"], 1, "  Phoenix is in Arizona.\n", "natural science", "weather-and-climate"));

    internal static string Extras(string subject, string topic) =>
        $$""","task":"closed choice","grade":"grade4","subject":"{{subject}}","topic":"{{topic}}","category":"Weather and climate around the world","skill":"Use climate data to make predictions"}""";

    internal static readonly string[] ScienceQaExpected =
    [
        """{"instruction":"Context: N/A\nQuestion: Which tense does the sentence use?\nMona will print her name.\nOptions: (A) future tense (B) present tense (C) past tense\n","input":"","output":"Answer: The answer is A.","answer":"A" """.TrimEnd() + Extras("language science", "verbs"),
        """{"instruction":"Context: Phoenix is in Arizona.\nQuestion: Which is the warmest month?\nOptions: (A) January (B) July\n","input":"","output":"Answer: The answer is B.","answer":"B" """.TrimEnd() + Extras("natural science", "weather-and-climate"),
    ];

    internal static List<string> Records(string path) =>
        JsonNode.Parse(File.ReadAllText(path))!.AsArray().Select(r => r!.ToJsonString(AsWritten)).ToList();

    internal static readonly JsonSerializerOptions AsWritten = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    [Fact]
    public void ScienceQaKeepsTextOnlyQuestionsWithSubjectAndTopic()
    {
        string output = Path.Combine(TestUtil.TempDir(), "scienceqa_train.json");
        var r = CliRunner.Run("data", "scienceqa", "--input", ScienceQaFile(), "--output", output, "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(ScienceQaExpected, Records(output));
        Assert.Equal(1, r.LastJson().GetProperty("skipped").GetInt32());
        // The records are ours: training reads them.
        Assert.Equal("B", Mola.Data.InstructionRecord.Load(output)[1].Answer);
    }

    [Fact]
    public void SplitByTopicWritesOneFilePerTopic()
    {
        string dir = Path.Combine(TestUtil.TempDir(), "topics");
        var r = CliRunner.Run("data", "scienceqa", "--input", ScienceQaFile(), "--output", dir, "--split-by", "topic");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(["verbs.json", "weather-and-climate.json"], Directory.GetFiles(dir).Select(Path.GetFileName).Order());
        Assert.Equal([ScienceQaExpected[0]], Records(Path.Combine(dir, "verbs.json")));
        Assert.Equal([ScienceQaExpected[1]], Records(Path.Combine(dir, "weather-and-climate.json")));
    }

    [Fact]
    public void TheJsonLinesExportGivesTheSameRecords()
    {
        string jsonl = Path.Combine(TestUtil.TempDir(), "train.jsonl");
        File.WriteAllText(jsonl,
            """{"image": null, "question": "Which is the warmest month?", "choices": ["January", "July"], "answer": 1, "hint": "  Phoenix is in Arizona.\n", "task": "closed choice", "grade": "grade4", "subject": "natural science", "topic": "weather-and-climate", "category": "Weather and climate around the world", "skill": "Use climate data to make predictions", "lecture": "", "solution": ""}""" + "\n" +
            """{"image": {"bytes": "iVBORw==", "path": null}, "question": "Q", "choices": ["a", "b"], "answer": 0, "hint": "", "task": "", "grade": "", "subject": "", "topic": "", "category": "", "skill": "", "lecture": "", "solution": ""}""" + "\n");
        string output = Path.Combine(TestUtil.TempDir(), "out.jsonl");
        var r = CliRunner.Run("data", "scienceqa", "--input", jsonl, "--output", output);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal([ScienceQaExpected[1]], File.ReadAllLines(output));
    }

    static readonly ParquetSchema ChoicesSchema = new(
        new DataField<string>("id"),
        new DataField<string>("question"),
        new DataField<string>("question_concept"),
        new StructField("choices", new ListField("label", new DataField<string>("item")), new ListField("text", new DataField<string>("item"))),
        new DataField<string>("answerKey"));

    [Fact]
    public void CommonsenseQaAndOpenBookQaTakeTheirChoicesLabels()
    {
        string csqa = Write("validation.parquet", ChoicesSchema, new Dictionary<string, object?>
        {
            ["id"] = "1afa02df02c908a558b4036e80242fac",
            ["question"] = "A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?",
            ["question_concept"] = "revolving door",
            ["choices"] = new Dictionary<string, object?> { ["label"] = new[] { "A", "B", "C", "D", "E" }, ["text"] = new[] { "bank", "library", "department store", "mall", "new york" } },
            ["answerKey"] = "A",
        });
        string output = Path.Combine(TestUtil.TempDir(), "csqa.json");
        var r = CliRunner.Run("data", "commonsenseqa", "--input", csqa, "--output", output);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(["""{"instruction":"Context: N/A\nQuestion: A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?\nOptions: (A) bank (B) library (C) department store (D) mall (E) new york\n","input":"","output":"Answer: The answer is A.","answer":"A","id":"1afa02df02c908a558b4036e80242fac","question_concept":"revolving door"}"""],
            Records(output));

        var openbookSchema = new ParquetSchema(
            new DataField<string>("id"),
            new DataField<string>("question_stem"),
            new StructField("choices", new ListField("text", new DataField<string>("item")), new ListField("label", new DataField<string>("item"))),
            new DataField<string>("answerKey"));
        string obqa = Write("test.parquet", openbookSchema, new Dictionary<string, object?>
        {
            ["id"] = "8-376",
            ["question_stem"] = "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
            ["choices"] = new Dictionary<string, object?> { ["text"] = new[] { "Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals" }, ["label"] = new[] { "A", "B", "C", "D" } },
            ["answerKey"] = "A",
        });
        var r2 = CliRunner.Run("data", "openbookqa", "--input", obqa, "--output", output);
        Assert.True(r2.ExitCode == 0, r2.ToString());
        Assert.Equal(["""{"instruction":"Context: N/A\nQuestion: Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as\nOptions: (A) Deep sea animals (B) fish (C) Long Sea Fish (D) Far Sea Animals\n","input":"","output":"Answer: The answer is A.","answer":"A","id":"8-376"}"""],
            Records(output));
    }

    static Dictionary<string, object?> Glue(long label, int idx, params (string Column, string Text)[] sentences)
    {
        var row = sentences.ToDictionary(s => s.Column, s => (object?)s.Text);
        row["label"] = label;
        row["idx"] = idx;
        return row;
    }

    [Fact]
    public void GlueTasksNameTheirLabelsAndLeaveOutHiddenOnes()
    {
        var pairs = new ParquetSchema(new DataField<string>("sentence1"), new DataField<string>("sentence2"), new DataField<long>("label"), new DataField<int>("idx"));
        string mrpc = Write("mrpc.parquet", pairs,
            Glue(1, 0, ("sentence1", "He said the foodservice pie business doesn't fit."), ("sentence2", "The foodservice pie business does not fit.")),
            Glue(-1, 1, ("sentence1", "hidden"), ("sentence2", "label")));
        string output = Path.Combine(TestUtil.TempDir(), "glue.json");
        var r = CliRunner.Run("data", "mrpc", "--input", mrpc, "--output", output);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(["""{"instruction":"Sentence 1: He said the foodservice pie business doesn't fit.\nSentence 2: The foodservice pie business does not fit.\nQuestion: Do the two sentences mean the same thing?\nOptions: not_equivalent, equivalent\n","input":"","output":"Answer: The answer is equivalent.","answer":"equivalent","idx":0}"""],
            Records(output));

        string rte = Write("rte.parquet", pairs, Glue(1, 7, ("sentence1", "No Weapons of Mass Destruction Found in Iraq Yet."), ("sentence2", "Weapons of Mass Destruction Found in Iraq.")));
        Assert.Equal(0, CliRunner.Run("data", "rte", "--input", rte, "--output", output).ExitCode);
        Assert.Equal(["""{"instruction":"Premise: No Weapons of Mass Destruction Found in Iraq Yet.\nHypothesis: Weapons of Mass Destruction Found in Iraq.\nQuestion: Does the premise entail the hypothesis?\nOptions: entailment, not_entailment\n","input":"","output":"Answer: The answer is not_entailment.","answer":"not_entailment","idx":7}"""],
            Records(output));

        var single = new ParquetSchema(new DataField<string>("sentence"), new DataField<long>("label"), new DataField<int>("idx"));
        string cola = Write("cola.parquet", single, Glue(0, 3, ("sentence", "The more we study verbs, the crazier they get get.")));
        Assert.Equal(0, CliRunner.Run("data", "cola", "--input", cola, "--output", output).ExitCode);
        Assert.Equal(["""{"instruction":"Sentence: The more we study verbs, the crazier they get get.\nQuestion: Is the sentence grammatically acceptable?\nOptions: unacceptable, acceptable\n","input":"","output":"Answer: The answer is unacceptable.","answer":"unacceptable","idx":3}"""],
            Records(output));
    }

    [Fact]
    public void AFileOfAnotherDataSetIsRefusedNamingTheMissingColumnsAndNothingIsWritten()
    {
        var single = new ParquetSchema(new DataField<string>("sentence"), new DataField<long>("label"), new DataField<int>("idx"));
        string cola = Write("cola.parquet", single, Glue(0, 3, ("sentence", "A sentence.")));
        string output = Path.Combine(TestUtil.TempDir(), "out.json");
        File.WriteAllText(output, "[]");
        var r = CliRunner.Run("data", "scienceqa", "--input", cola, "--output", output);
        Assert.Equal($"{cola}: not derek-thomas/ScienceQA as the hub ships it: no columns \"image\", \"question\", \"choices\", \"answer\", \"hint\" " +
            "(expected image, question, choices, answer, hint, or ScienceQA's problems.json (pid to problem, with \"split\"); the file has sentence, label, idx)", r.SingleErrorLine());
        Assert.Equal("[]", File.ReadAllText(output));
    }

    [Fact]
    public void AValueOfTheWrongKindNamesTheRowAndColumn()
    {
        var pairs = new ParquetSchema(new DataField<string>("sentence1"), new DataField<string>("sentence2"), new DataField<long>("label"), new DataField<int>("idx"));
        string rte = Write("rte.parquet", pairs, Glue(0, 0, ("sentence1", "a"), ("sentence2", "b")), Glue(2, 1, ("sentence1", "a"), ("sentence2", "b")));
        var r = CliRunner.Run("data", "rte", "--input", rte, "--output", Path.Combine(TestUtil.TempDir(), "x.json"));
        Assert.Equal($"{rte} row 2: column \"label\": expected 0 (entailment) or 1 (not_entailment), or -1 for a hidden label, got 2", r.SingleErrorLine());

        string jsonl = Path.Combine(TestUtil.TempDir(), "cola.jsonl");
        File.WriteAllText(jsonl, """{"sentence": "fine", "label": 1, "idx": 0}""" + "\n" + """{"sentence": 5, "label": 1, "idx": 1}""" + "\n");
        var r2 = CliRunner.Run("data", "cola", "--input", jsonl, "--output", Path.Combine(TestUtil.TempDir(), "x.json"));
        Assert.Equal($"{jsonl}:2: column \"sentence\": expected a string, got 5", r2.SingleErrorLine());
    }
}
