using System.Text.Json;
using System.Text.Json.Nodes;
using Mola;
using Mola.Evaluation;
using Xunit;

namespace Mola.Tests;

public class BenchmarkTests
{
    [Fact]
    public void RegistryHoldsThePapersSixTasksWithTheirLabels()
    {
        Assert.Equal(["scienceqa", "commonsenseqa", "openbookqa", "mrpc", "cola", "rte"], Benchmarks.Names);
        Assert.Equal(["A", "B", "C", "D", "E"], Benchmarks.Get("scienceqa").Labels);
        Assert.Equal(["A", "B", "C", "D", "E"], Benchmarks.Get("commonsenseqa").Labels);
        Assert.Equal(["A", "B", "C", "D"], Benchmarks.Get("openbookqa").Labels);
        // GLUE's own spellings, index = the data set's integer label.
        Assert.Equal(["not_equivalent", "equivalent"], Benchmarks.Get("mrpc").Labels);
        Assert.Equal(["unacceptable", "acceptable"], Benchmarks.Get("cola").Labels);
        Assert.Equal(["entailment", "not_entailment"], Benchmarks.Get("rte").Labels);
        Assert.Equal(["scienceqa", "commonsenseqa", "openbookqa"], Benchmarks.All.Where(b => b.IsMultipleChoice).Select(b => b.Name));
        Assert.Equal(["cola"], Benchmarks.All.Where(b => b.ReportsMcc).Select(b => b.Name));
    }

    [Fact]
    public void LookupIgnoresCase() => Assert.Same(Benchmarks.Get("cola"), Benchmarks.Get(" CoLA "));

    [Theory]
    [InlineData("sciqa")]
    [InlineData("")]
    [InlineData("glue")]
    public void UnknownTaskListsTheKnownOnes(string name)
    {
        var e = Assert.Throws<MolaException>(() => Benchmarks.Get(name));
        Assert.Equal($"unknown task \"{name}\"; known tasks: scienceqa, commonsenseqa, openbookqa, mrpc, cola, rte", e.Message);
    }

    [Fact]
    public void ContinuationIsTheTrainingOutput()
    {
        Assert.Equal("Answer: The answer is B.", Benchmarks.Get("scienceqa").Continuation("B"));
        Assert.Equal("Answer: The answer is not_entailment.", Benchmarks.Get("rte").Continuation("not_entailment"));
        Assert.Throws<ArgumentException>(() => Benchmarks.Get("openbookqa").Continuation("E"));
    }

    [Fact]
    public void CandidateLabelsAreTheLettersTheOptionsOffer()
    {
        var sqa = Benchmarks.Get("scienceqa");
        Assert.Equal(["A", "B"], sqa.CandidateLabels("Context: N/A\nQuestion: Is it (C) or not?\nOptions: (A) yes (B) no\n"));
        Assert.Equal(["A", "B", "C"], sqa.CandidateLabels("Question: Pick.\nOptions: (A) x (B) y (C) z\n"));
        Assert.Equal(sqa.Labels, sqa.CandidateLabels("no options here"));
        Assert.Equal(["entailment", "not_entailment"], Benchmarks.Get("rte").CandidateLabels("Premise: (A) (B)"));
    }

    [Fact]
    public void GoldLabelComesFromAnswerThenOutput()
    {
        var obqa = Benchmarks.Get("openbookqa");
        Assert.Equal("C", obqa.GoldLabel("C", "Answer: The answer is A.", "f:1"));  // answer wins
        Assert.Equal("C", obqa.GoldLabel(" c ", null, "f:1"));
        Assert.Equal("D", obqa.GoldLabel(null, "Answer: The answer is D.", "f:1"));
        Assert.Equal("D", obqa.GoldLabel("", "Answer: The answer is D.", "f:1"));
        Assert.Equal("not_equivalent", Benchmarks.Get("mrpc").GoldLabel("Not_Equivalent", null, "f:1"));
        Assert.Equal("entailment", Benchmarks.Get("rte").GoldLabel(null, "Answer: The answer is entailment.", "f:1"));
    }

    [Fact]
    public void BadGoldLabelsAreUserErrorsNamingTheRecord()
    {
        var obqa = Benchmarks.Get("openbookqa");
        Assert.Equal("data.json:3: \"answer\" is \"E\"; a OpenBookQA answer is one of A, B, C, D",
            Assert.Throws<MolaException>(() => obqa.GoldLabel("E", null, "data.json:3")).Message);
        Assert.StartsWith("data.json:4: no \"answer\" and no \"output\"",
            Assert.Throws<MolaException>(() => obqa.GoldLabel(null, null, "data.json:4")).Message);
        Assert.StartsWith("data.json:5: no \"answer\", and \"output\" (\"I think so.\") names none of A, B, C, D",
            Assert.Throws<MolaException>(() => obqa.GoldLabel(null, "I think so.", "data.json:5")).Message);
        Assert.StartsWith("d.json:2: \"answer\" is \"maybe\"",
            Assert.Throws<MolaException>(() => Benchmarks.Get("rte").GoldLabel("maybe", null, "d.json:2")).Message);
    }

    [Fact]
    public void GoldLabelOfAJsonRecord()
    {
        var mrpc = Benchmarks.Get("mrpc");
        Assert.Equal("equivalent", mrpc.GoldLabel(JsonNode.Parse("""{"answer": "equivalent"}""")!.AsObject(), "m.json", 7));
        Assert.Equal("equivalent", mrpc.GoldLabel(JsonNode.Parse("""{"answer": null, "output": "Answer: The answer is equivalent."}""")!.AsObject(), "m.json", 7));
        var e = Assert.Throws<MolaException>(() => mrpc.GoldLabel(JsonNode.Parse("""{"answer": 1}""")!.AsObject(), "m.json", 7));
        Assert.Equal("m.json:7: \"answer\" is the number 1; write the label as a string, one of \"not_equivalent\" (GLUE label 0), \"equivalent\" (GLUE label 1)", e.Message);
        Assert.StartsWith("m.json:8: key \"output\": expected a string, got [\"x\"]",
            Assert.Throws<MolaException>(() => mrpc.GoldLabel(JsonNode.Parse("""{"output": ["x"]}""")!.AsObject(), "m.json", 8)).Message);
    }

    static string ExamplesDir() => TestUtil.ExamplesDir();

    public static TheoryData<string> TaskNames() => [.. Benchmarks.Names];

    [Theory]
    [MemberData(nameof(TaskNames))]
    public void ExampleFileLoadsAndEveryGoldLabelIsInItsTask(string task)
    {
        var benchmark = Benchmarks.Get(task);
        string path = Path.Combine(ExamplesDir(), task + ".json");
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var records = doc.RootElement.EnumerateArray().ToList();
        Assert.Equal(8, records.Count);
        var golds = new HashSet<string>();
        foreach (var r in records)
        {
            string instruction = r.GetProperty("instruction").GetString()!;
            Assert.Equal("", r.GetProperty("input").GetString());
            string output = r.GetProperty("output").GetString()!;
            string answer = r.GetProperty("answer").GetString()!;

            Assert.Contains(answer, benchmark.Labels);
            Assert.Equal($"Answer: The answer is {answer}.", output);
            Assert.Equal(answer, benchmark.ExtractAnswer(output));
            Assert.Contains(answer, benchmark.CandidateLabels(instruction));
            Assert.EndsWith("\n", instruction);
            if (benchmark.IsMultipleChoice)
            {
                Assert.StartsWith("Context: ", instruction);
                Assert.Contains("\nQuestion: ", instruction);
                Assert.Contains("\nOptions: (A) ", instruction);
            }
            else
            {
                Assert.Contains("\nOptions: " + string.Join(", ", benchmark.Labels) + "\n", instruction);
            }
            golds.Add(answer);
        }
        // Every GLUE class appears; multiple-choice answers are not all the same letter.
        if (benchmark.IsMultipleChoice) Assert.True(golds.Count >= 3);
        else Assert.Equal(benchmark.Labels.Count, golds.Count);
    }
}
