using System.Text;
using System.Text.Json.Nodes;
using Mola.Data;
using Xunit;

namespace Mola.Tests;

/// <summary>
/// <c>mola data</c> on small files written in each data set's original release layout, as the Hugging Face loading
/// scripts read them (glue.py, commonsense_qa.py, openbookqa.py, ScienceQA's problems.json + pid_splits.json as
/// lupantech/ScienceQA's run_gpt3.py loads them): each gives the records written out by hand from docs/BENCHMARKS.md's
/// rules, the same as the hub's Parquet rows of the same questions (<see cref="DataCommandTests"/>).
/// </summary>
public class OriginalReleaseDataTests
{
    static string Write(string name, string text, bool byteOrderMark = false)
    {
        string path = Path.Combine(TestUtil.TempDir(), name);
        File.WriteAllText(path, text, new UTF8Encoding(byteOrderMark));
        return path;
    }

    static List<string> Convert(string task, params string[] paths) => ConvertSplit(task, null, paths);

    static List<string> ConvertSplit(string task, string? split, params string[] paths) =>
        PublicDatasets.Convert(task, paths, split).Records.Select(r => r.ToJsonString(DataCommandTests.AsWritten)).ToList();

    static string WithPid(string record, string pid) => record[..^1] + $",\"pid\":\"{pid}\"}}";

    /// <summary>A problem of problems.json: the hub's row of the same question (its columns are the same names), its
    /// image a file name or null, and its split.</summary>
    static JsonObject Problem(string question, string[] choices, sbyte answer, string hint, string? image, string split, string subject, string topic)
    {
        var row = System.Text.Json.JsonSerializer.SerializeToNode(DataCommandTests.ScienceQaRow(null, question, choices, answer, hint, subject, topic))!.AsObject();
        row["image"] = image;
        row["split"] = split;
        return row;
    }

    /// <summary>problems.json as released: one object, pid to problem, indented over many lines.</summary>
    static string ProblemsFile() => Write("problems.json", new JsonObject
    {
        ["5"] = Problem("Which tense does the sentence use?\nMona will print her name.", ["future tense", "present tense", "past tense"], 0, "", null, "train", "language science", "verbs"),
        ["12"] = Problem("Which animal's feet are adapted for digging?", ["mole", "duck"], 0, "", "image.png", "train", "natural science", "adaptations"),
        ["7"] = Problem("Which is the warmest month?", ["January", "July"], 1, "  Phoenix is in Arizona.\n", null, "test", "natural science", "weather-and-climate"),
        ["9"] = Problem("Which word is a noun?", ["run", "cat"], 1, "", null, "val", "language science", "word-study"),
    }.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));

    [Fact]
    public void ScienceQaProblemsJsonGivesOneSplitInPidSplitsOrder()
    {
        string problems = ProblemsFile();
        string splits = Write("pid_splits.json", """{"train": ["12", "5"], "val": ["9"], "test": ["7"], "minitrain": ["5"]}""");
        var train = PublicDatasets.Convert("scienceqa", [problems, splits], "train");
        Assert.Equal([WithPid(DataCommandTests.ScienceQaExpected[0], "5")], train.Records.Select(r => r.ToJsonString(DataCommandTests.AsWritten)));
        Assert.Equal(1, train.Skipped);   // pid 12 has an image
        Assert.Equal([WithPid(DataCommandTests.ScienceQaExpected[1], "7")], ConvertSplit("scienceqa", "test", splits, problems));
        Assert.Equal([WithPid(DataCommandTests.ScienceQaExpected[0], "5")], ConvertSplit("scienceqa", "minitrain", problems, splits));
        // Without pid_splits.json, each problem's own "split" decides.
        Assert.Equal([WithPid(DataCommandTests.ScienceQaExpected[1], "7")], ConvertSplit("scienceqa", "test", problems));
    }

    [Fact]
    public void ScienceQaProblemsJsonNeedsASplitNamedOnTheCommandLine()
    {
        string problems = ProblemsFile();
        string output = Path.Combine(TestUtil.TempDir(), "out.json");
        Assert.Equal($"{problems}: ScienceQA's problems.json holds every split; choose one with --split (train, val, test)",
            CliRunner.Run("data", "scienceqa", "--input", problems, "--output", output).SingleErrorLine());
        Assert.Equal($"--split dev: no problem of {problems} has \"split\": \"dev\" (its splits: test, train, val)",
            CliRunner.Run("data", "scienceqa", "--input", problems, "--output", output, "--split", "dev").SingleErrorLine());
        string splits = Write("pid_splits.json", """{"train": ["5", "404"]}""");
        Assert.Equal($"{splits}: \"train\" lists pid \"404\", which {problems} does not have",
            CliRunner.Run("data", "scienceqa", "--input", problems, "--input", splits, "--output", output, "--split", "train").SingleErrorLine());
        Assert.False(File.Exists(output));

        var r = CliRunner.Run("data", "scienceqa", "--input", problems, "--output", output, "--split", "train", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal([WithPid(DataCommandTests.ScienceQaExpected[0], "5")], DataCommandTests.Records(output));
        // Several files after one --input (a shell glob).
        string good = Write("pid_splits.json", """{"test": ["7"]}""");
        var r2 = CliRunner.Run("data", "scienceqa", "--input", problems, good, "--output", output, "--split", "test");
        Assert.True(r2.ExitCode == 0, r2.ToString());
        Assert.Equal([WithPid(DataCommandTests.ScienceQaExpected[1], "7")], DataCommandTests.Records(output));
    }

    const string CsqaRecord = """{"instruction":"Context: N/A\nQuestion: A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?\nOptions: (A) bank (B) library (C) department store (D) mall (E) new york\n","input":"","output":"Answer: The answer is A.","answer":"A","id":"1afa02df02c908a558b4036e80242fac","question_concept":"revolving door"}""";

    [Fact]
    public void CommonsenseQaJsonLinesAsReleased()
    {
        string train = Write("train_rand_split.jsonl",
            """{"answerKey": "A", "id": "1afa02df02c908a558b4036e80242fac", "question": {"question_concept": "revolving door", "choices": [{"label": "A", "text": "bank"}, {"label": "B", "text": "library"}, {"label": "C", "text": "department store"}, {"label": "D", "text": "mall"}, {"label": "E", "text": "new york"}], "stem": "A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?"}}""" + "\n" +
            // The test file has no answerKey: a hidden label, left out.
            """{"id": "90b30172e645ff91f7171a048582eb8b", "question": {"question_concept": "townhouse", "choices": [{"label": "A", "text": "suburban development"}, {"label": "B", "text": "apartment building"}], "stem": "The townhouse was a hard sell for the realtor, it was right next to a high rise what?"}}""" + "\n");
        var result = PublicDatasets.Convert("commonsenseqa", [train]);
        Assert.Equal([CsqaRecord], result.Records.Select(r => r.ToJsonString(DataCommandTests.AsWritten)));
        Assert.Equal(1, result.Skipped);
    }

    const string ObqaRecord = """{"instruction":"Context: N/A\nQuestion: Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as\nOptions: (A) Deep sea animals (B) fish (C) Long Sea Fish (D) Far Sea Animals\n","input":"","output":"Answer: The answer is A.","answer":"A","id":"8-376"}""";

    const string ObqaQuestion = "\"question\": " + """{"stem": "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as", "choices": [{"text": "Deep sea animals", "label": "A"}, {"text": "fish", "label": "B"}, {"text": "Long Sea Fish", "label": "C"}, {"text": "Far Sea Animals", "label": "D"}]}""";

    [Fact]
    public void OpenBookQaMainAndAdditionalJsonLines()
    {
        string main = Write("test.jsonl", $$"""{"id": "8-376", {{ObqaQuestion}}, "answerKey": "A"}""" + "\n");
        Assert.Equal([ObqaRecord], Convert("openbookqa", main));
        // The Additional set's fact and scores stay in the record.
        string additional = Write("test_complete.jsonl",
            $$"""{"id": "8-376", {{ObqaQuestion}}, "fact1": "deep sea animals live deep in the ocean", "humanScore": 1.0, "clarity": 2.0, "turkIdAnonymized": "b356d338b7", "answerKey": "A"}""" + "\n");
        Assert.Equal([ObqaRecord[..^1] + ""","fact1":"deep sea animals live deep in the ocean","humanScore":1.0,"clarity":2.0}"""], Convert("openbookqa", additional));

        string bad = Write("bad.jsonl", """{"id": "1", "question": "a string", "answerKey": "A"}""" + "\n");
        Assert.Equal($"{bad}:1: key \"question\": expected an object of \"stem\" and \"choices\", got \"a string\"",
            Assert.Throws<MolaException>(() => Convert("openbookqa", bad)).Message);
    }

    [Fact]
    public void MrpcFromTheMsrParaphraseFilesAndGlueTsv()
    {
        // As Microsoft ships it: a byte-order mark, CRLF line ends, quotes that are part of the text (QUOTE_NONE).
        string train = Write("msr_paraphrase_train.txt",
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n" +
            "1\t702876\t702977\tAmrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .\tReferring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence .\r\n" +
            "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 .\r\n",
            byteOrderMark: true);
        string question = "Question: Do the two sentences mean the same thing?\\nOptions: not_equivalent, equivalent\\n";
        Assert.Equal([
            $$"""{"instruction":"Sentence 1: Amrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .\nSentence 2: Referring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence .\n{{question}}","input":"","output":"Answer: The answer is equivalent.","answer":"equivalent","idx":0}""",
            $$"""{"instruction":"Sentence 1: Yucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion .\nSentence 2: Yucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 .\n{{question}}","input":"","output":"Answer: The answer is not_equivalent.","answer":"not_equivalent","idx":1}""",
        ], Convert("mrpc", train));

        // GLUE's test.tsv numbers its rows instead of labelling them: hidden labels, left out.
        string test = Write("test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tPCCW 's chief operating officer .\tCurrent Chief Operating Officer .\n");
        var hidden = PublicDatasets.Convert("mrpc", [test]);
        Assert.Equal((0, 1), (hidden.Records.Count, hidden.Skipped));

        string torn = Write("dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n1\t3\t4\tonly one sentence\n");
        Assert.Equal($"{torn}:3: expected 5 tab-separated fields (Quality, #1 ID, #2 ID, #1 String, #2 String), got 4",
            Assert.Throws<MolaException>(() => Convert("mrpc", torn)).Message);
    }

    [Fact]
    public void ColaTsvWithoutAHeader()
    {
        string train = Write("in_domain_train.tsv",
            "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n" +
            "gj04\t0\t*\tThey drank the pub.\n");
        string question = "Question: Is the sentence grammatically acceptable?\\nOptions: unacceptable, acceptable\\n";
        Assert.Equal([
            $$"""{"instruction":"Sentence: Our friends won't buy this analysis, let alone the next one we propose.\n{{question}}","input":"","output":"Answer: The answer is acceptable.","answer":"acceptable","idx":0}""",
            $$"""{"instruction":"Sentence: They drank the pub.\n{{question}}","input":"","output":"Answer: The answer is unacceptable.","answer":"unacceptable","idx":1}""",
        ], Convert("cola", train));
        string test = Write("test.tsv", "index\tsentence\n0\tBill whistled past the house.\n");
        Assert.Empty(Convert("cola", test));

        string bad = Write("in_domain_dev.tsv", "gj04\t1\t\tFine.\ngj04\t2\t\tNot a label.\n");
        Assert.Equal($"{bad}:2: column \"label\": expected 0 or 1, got \"2\"", Assert.Throws<MolaException>(() => Convert("cola", bad)).Message);
    }

    [Fact]
    public void RteTsvWithClassNames()
    {
        string dev = Write("dev.tsv",
            "index\tsentence1\tsentence2\tlabel\n" +
            "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n" +
            "1\tA place of sorrow, after Pope John Paul II died, became a place of celebration.\tPope Benedict XVI is the new leader of the Roman Catholic Church.\tentailment\n");
        string question = "Question: Does the premise entail the hypothesis?\\nOptions: entailment, not_entailment\\n";
        Assert.Equal([
            $$"""{"instruction":"Premise: No Weapons of Mass Destruction Found in Iraq Yet.\nHypothesis: Weapons of Mass Destruction Found in Iraq.\n{{question}}","input":"","output":"Answer: The answer is not_entailment.","answer":"not_entailment","idx":0}""",
            $$"""{"instruction":"Premise: A place of sorrow, after Pope John Paul II died, became a place of celebration.\nHypothesis: Pope Benedict XVI is the new leader of the Roman Catholic Church.\n{{question}}","input":"","output":"Answer: The answer is entailment.","answer":"entailment","idx":1}""",
        ], Convert("rte", dev));

        string bad = Write("train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n");
        Assert.Equal($"{bad}:2: column \"label\": expected entailment or not_entailment, got \"maybe\"", Assert.Throws<MolaException>(() => Convert("rte", bad)).Message);
    }

    [Fact]
    public void AnotherTasksFileIsRefusedNamingTheLayoutsExpected()
    {
        string mrpc = Write("msr_paraphrase_test.txt", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n");
        string output = Path.Combine(TestUtil.TempDir(), "out.json");
        Assert.Equal($"{mrpc}: not nyu-mll/glue rte as the hub ships it: no columns \"sentence1\", \"sentence2\", \"label\" (expected sentence1, sentence2, label, " +
            "or GLUE's RTE/train.tsv, dev.tsv or test.tsv (index, sentence1, sentence2, label); the file has a first line of \"Quality\", \"#1 ID\", \"#2 ID\", \"#1 String\", \"#2 String\")",
            CliRunner.Run("data", "rte", "--input", mrpc, "--output", output).SingleErrorLine());
        // --split is for a file of several splits only.
        Assert.Equal($"--split train: {mrpc} is one split already (only ScienceQA's problems.json holds several)",
            CliRunner.Run("data", "mrpc", "--input", mrpc, "--output", output, "--split", "train").SingleErrorLine());
        Assert.False(File.Exists(output));
    }
}
