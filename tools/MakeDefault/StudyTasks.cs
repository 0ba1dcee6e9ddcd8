using System.Text.Json;

namespace MakeDefault;

/// <summary>
/// The embedded default study's two tasks (`mola experiment` with no spec), graded in difficulty so that held-out
/// accuracy after the study's short training lands between chance and 100%. Both are about the group of a word, over
/// the four groups of four words the embedded model met in pretraining (earth, weather, plant, animal: its
/// "Name the group of the word" records), asked in a way it never saw. The train file holds a group's four words at
/// very different frequencies (<see cref="TrainShare"/>): the frequent ones are learned in a few dozen steps, the rare
/// one only partly, and the fourth never occurs in train, so only what the adapter makes of the base model's own
/// knowledge answers it. The validation and test files hold every word and every label equally often, so a constant
/// prediction scores exactly chance. A small share of train labels (<see cref="NoiseShare"/>) is wrong on purpose.
/// Outputs are written as the scorer's continuation ("Answer: The answer is B."), so generation and likelihood scoring
/// read the same text. (Tried and measured: KeywordTask's 28 words, which pretraining never grouped, reached only
/// 40-54% on four options in 200-400 steps; "is it an energy word", a pairing pretraining asked as a two-option
/// question, reached 86-100% in 150 steps; "is the word in the named group" 60% in 300 steps.)
/// </summary>
public static class StudyTasks
{
    /// <summary>Train records per word of a group, in the group's word order, out of 20: 60% of the group's records,
    /// 30%, 10%, and none for the fourth word (held out of train altogether).</summary>
    public static readonly int[] TrainShare = [12, 6, 2, 0];

    /// <summary>Share of train records given a wrong label (another label than the rule's, at random).</summary>
    public const double NoiseShare = 0.05;

    static readonly string[] Letters = ["A", "B", "C", "D"];
    static string GroupName(int g) => Words.Groups[g].Name;

    /// <summary>Short prompts, as training time is tokens (this tokenizer spends about one a character): the word and a
    /// number that makes each record a new combination (10-99: every held-out input is new, train may repeat its own).</summary>
    static string Prompt(Random rnd, string word) => $"{word} {rnd.Next(10, 100)}";

    /// <summary>A task: its name and instruction, the groups it asks about (indices into <see cref="Words.Groups"/>), the
    /// label of each (two groups may share one), and the text after the word.</summary>
    sealed record StudyTask(string Name, string Instruction, int[] Groups, string[] Labels, string AfterWord = "");

    static readonly StudyTask[] Tasks =
    [
        // Four options, always in the same order: the letter of the word's group.
        new("group-of-word", "Which group is the word in?", [0, 1, 2, 3], Letters,
            $" (A) {GroupName(0)} (B) {GroupName(1)} (C) {GroupName(2)} (D) {GroupName(3)}"),
        // Two classes with RTE's labels: is the word a plant or animal word (rather than an earth or weather word)?
        // Pretraining named each word's group but never paired the groups up.
        new("plant-or-animal", "Is the word a plant or animal word?", [0, 1, 2, 3], ["not_entailment", "not_entailment", "entailment", "entailment"]),
    ];

    /// <summary>Writes DIR/study-tasks/{group-of-word,plant-or-animal}/{train,validation,test}.jsonl and template.json.
    /// <paramref name="train"/> must be a multiple of 80 (exact word frequencies), the held-out counts of 16 (every
    /// group and word equally often). No validation or test input occurs in train, none of test in validation.</summary>
    public static void Write(string assets, int seed, int train, int validation, int test)
    {
        foreach (var task in Tasks)
        {
            int groups = task.Groups.Length, perShare = train / (groups * TrainShare.Sum());
            if (perShare * groups * TrainShare.Sum() != train || validation % 16 != 0 || test % 16 != 0)
                throw new ArgumentException($"train must be a multiple of {4 * TrainShare.Sum()}, validation and test of 16");
            var rnd = new Random(seed);
            TaskRecord Make(int g, int w)
            {
                string label = task.Labels[g];
                return new(task.Instruction, Prompt(rnd, Words.Groups[task.Groups[g]].Members[w]) + task.AfterWord, $"Answer: The answer is {label}.", label);
            }
            var seen = new HashSet<string>();
            // Held out, in turn: the group (i % groups), then its word: every group and word equally often; inputs unique.
            List<TaskRecord> HeldOut(int n)
            {
                var list = new List<TaskRecord>();
                for (int tries = 0; list.Count < n; tries++)
                {
                    var r = Make(list.Count % groups, list.Count / groups % TrainShare.Length);
                    if (seen.Add(r.Input)) list.Add(r);
                    if (tries > 100 * n) throw new InvalidOperationException($"{task.Name}: not enough distinct records for {n}");
                }
                return list;
            }
            var testSet = HeldOut(test);
            var validationSet = HeldOut(validation);
            // Train: exact word counts, inputs never held out, then a shuffled order and NoiseShare of the labels wrong.
            var trainSet = new List<TaskRecord>();
            for (int g = 0; g < groups; g++)
                for (int w = 0; w < TrainShare.Length; w++)
                    for (int k = 0; k < TrainShare[w] * perShare; k++)
                    {
                        TaskRecord r;
                        do r = Make(g, w); while (seen.Contains(r.Input));
                        trainSet.Add(r);
                    }
            trainSet = rnd.Shuffled(trainSet);
            foreach (int i in rnd.Shuffled(Enumerable.Range(0, train)).Take((int)Math.Round(NoiseShare * train)))
            {
                string wrong = rnd.Pick(task.Labels.Where(l => l != trainSet[i].Answer).ToList());
                trainSet[i] = trainSet[i] with { Output = $"Answer: The answer is {wrong}.", Answer = wrong };
            }
            string dir = Path.Combine(assets, "study-tasks", task.Name);
            Directory.CreateDirectory(dir);
            foreach (var (file, records) in new[] { ("train", trainSet), ("validation", validationSet), ("test", testSet) })
                File.WriteAllLines(Path.Combine(dir, $"{file}.jsonl"), records.Select(r => JsonSerializer.Serialize(
                    new Dictionary<string, string> { ["instruction"] = r.Instruction, ["input"] = r.Input, ["output"] = r.Output, ["answer"] = r.Answer })));
            File.WriteAllText(Path.Combine(dir, "template.json"), KeywordTask.TemplateJson + "\n");
            Console.WriteLine($"wrote {task.Name}: {trainSet.Count} train, {validationSet.Count} validation, {testSet.Count} test records to {dir}");
        }
    }
}
