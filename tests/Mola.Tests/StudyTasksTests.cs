using Mola.Data;
using Mola.Evaluation;
using Mola.Models;
using Mola.Tokenization;
using Xunit;

namespace Mola.Tests;

/// <summary>The embedded default study's tasks (assets/study-tasks, made by tools/MakeDefault study-tasks) have the
/// properties assets/README.md states, counted from the shipped files: balanced held-out labels, one label per word,
/// the word frequencies, the held-out word, the 5% of wrong train labels, and an untrained model at chance.</summary>
public class StudyTasksTests
{
    static readonly string Tasks = Path.Combine(AppContext.BaseDirectory, "assets", "study-tasks");

    static readonly (string Task, string Benchmark)[] ShippedTasks = [("group-of-word", "openbookqa"), ("plant-or-animal", "rte")];

    public static TheoryData<string, string> Shipped
    {
        get
        {
            var data = new TheoryData<string, string>();
            foreach (var (task, benchmark) in ShippedTasks) data.Add(task, benchmark);
            return data;
        }
    }

    [Fact]
    public void TheDefaultSpecRunsTheseTasks()
    {
        var spec = StudySpec.Load(Path.Combine(Tasks, "study.yaml"));
        Assert.Equal(ShippedTasks, spec.Tasks.Select(t => (t.Name, t.Benchmark.Name)));
        Assert.All(spec.Tasks, t => Assert.Equal(Path.GetFullPath(Path.Combine(Tasks, t.Name, "test.jsonl")), Path.GetFullPath(t.Test)));
    }

    static IReadOnlyList<InstructionRecord> Load(string task, string split) => InstructionRecord.Load(Path.Combine(Tasks, task, $"{split}.jsonl"));

    /// <summary>A record's word: its input's first word ("rock 47 (A) earth ...").</summary>
    static string WordOf(InstructionRecord r) => r.Input.Split(' ')[0];

    [Theory]
    [MemberData(nameof(Shipped))]
    public void HeldOutLabelsAreBalancedAndEveryWordHasOneLabel(string task, string benchmark)
    {
        var labels = Benchmarks.Get(benchmark).Labels;
        foreach (var split in new[] { "validation", "test" })
        {
            var records = Load(task, split);
            // Every label equally often: a constant prediction scores exactly chance.
            var counts = labels.Select(l => records.Count(r => r.Answer == l)).ToList();
            Assert.True(counts.All(c => c == records.Count / labels.Count) && counts.Sum() == records.Count, $"{task} {split}: {string.Join(", ", counts)}");
            // The rule: a word's label never changes on held-out records.
            Assert.All(records.GroupBy(WordOf), g => Assert.Single(g.Select(r => r.Answer).Distinct()));
        }
        var test = Load(task, "test");
        var held = Load(task, "validation").Concat(test).Select(r => r.Input).ToHashSet();
        Assert.DoesNotContain(Load(task, "train"), r => held.Contains(r.Input));
        Assert.Equal(test.Count, test.Select(r => r.Input).Distinct().Count());
        Assert.DoesNotContain(Load(task, "validation"), r => test.Any(t => t.Input == r.Input));
    }

    [Theory]
    [MemberData(nameof(Shipped))]
    public void TrainHasTheStatedWordFrequenciesAndFivePercentWrongLabels(string task, string benchmark)
    {
        _ = benchmark;
        // Each word's true label, read from the (clean) test file.
        var truth = Load(task, "test").GroupBy(WordOf).ToDictionary(g => g.Key, g => g.First().Answer);
        var train = Load(task, "train");
        Assert.All(train, r => Assert.True(truth.ContainsKey(WordOf(r)), $"train word {WordOf(r)} is not a test word"));
        Assert.Equal(0.05, train.Count(r => r.Answer != truth[WordOf(r)]) / (double)train.Count, 10);
        // A group's four words make 60%, 30%, 10% and 0% of its train records; a label of the two-class task covers two
        // groups, so there each share comes twice, halved.
        foreach (var label in truth.GroupBy(kv => kv.Value, kv => kv.Key))
        {
            int groups = label.Count() / 4;
            var shares = label.Select(w => train.Count(r => WordOf(r) == w)).OrderDescending()
                .Select(n => Math.Round(n / (double)train.Count(r => truth[WordOf(r)] == label.Key), 10));
            Assert.Equal(new[] { 0.6, 0.3, 0.1, 0.0 }.SelectMany(s => Enumerable.Repeat(Math.Round(s / groups, 10), groups)), shares);
        }
        // So a quarter of the test records are about a word train never shows.
        var trainWords = train.Select(WordOf).ToHashSet();
        Assert.Equal(0.25, Load(task, "test").Count(r => !trainWords.Contains(WordOf(r))) / (double)Load(task, "test").Count, 10);
    }

    [Theory]
    [MemberData(nameof(Shipped))]
    public void TheUntrainedModelScoresChance(string task, string benchmark)
    {
        string model = Path.Combine(AppContext.BaseDirectory, "assets", "default-model");
        using var m = ModelLoader.Load(model);
        var tok = MolaTokenizer.Load(model, m.Config.BosTokenId, m.Config.EosTokenId, m.Config.VocabSize);
        var b = Benchmarks.Get(benchmark);
        // Scored by likelihood, which has no unparseable answers: what the base model prefers, not whether it can write "The answer is".
        var template = PromptTemplate.Load(StudySpec.Load(Path.Combine(Tasks, "study.yaml")).Template);
        var r = Evaluator.Run(m, tok, template, b, Load(task, "test"), Scoring.Likelihood);
        Assert.InRange(r.Metrics.Accuracy, 1.0 / b.Labels.Count - 0.05, 1.0 / b.Labels.Count + 0.05);
    }
}
