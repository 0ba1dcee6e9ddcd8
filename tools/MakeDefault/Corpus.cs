using System.Text;

namespace MakeDefault;

/// <summary>The Alpaca template (alpaca-lora's <c>templates/alpaca.json</c>, which MoLA uses).</summary>
public static class Alpaca
{
    public static string Prompt(string instruction, string input) => input.Length == 0
        ? "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
          + $"### Instruction:\n{instruction}\n\n### Response:\n"
        : "Below is an instruction that describes a task, paired with an input that provides further context. "
          + "Write a response that appropriately completes the request.\n\n"
          + $"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
}

/// <summary>A pretraining document: a prompt, scored or not, then a response that is always scored.</summary>
public sealed record Document(string Prompt, string Response, bool ScorePrompt)
{
    public string Text => Prompt + Response;
}

/// <summary>One instruction record: what the trainer reads from the task files.</summary>
public sealed record TaskRecord(string Instruction, string Input, string Output, string Answer);

/// <summary>The words everything is made of: six groups of four short science words.</summary>
public static class Words
{
    public static readonly (string Name, string[] Members)[] Groups =
    [
        ("earth", ["rock", "soil", "sand", "clay"]),
        ("weather", ["rain", "snow", "wind", "fog"]),
        ("plant", ["tree", "leaf", "seed", "root"]),
        ("animal", ["fish", "fox", "owl", "hen"]),
        ("energy", ["heat", "sound", "force", "fire"]),
        ("matter", ["solid", "liquid", "gas", "water"]),
    ];

    public static readonly string[] Letters = ["A", "B", "C", "D"];

    public static int GroupOf(string word) => Array.FindIndex(Groups, g => g.Members.Contains(word));

    public static T Pick<T>(this Random rnd, IReadOnlyList<T> items) => items[rnd.Next(items.Count)];

    public static string AnyWord(Random rnd) => rnd.Pick(rnd.Pick(Groups).Members);

    public static List<T> Shuffled<T>(this Random rnd, IEnumerable<T> items) => items.OrderBy(_ => rnd.Next()).ToList();

    /// <summary>A record with a fixed list of options; the answer is option <paramref name="correct"/>.</summary>
    public static TaskRecord MultipleChoice(string instruction, string question, IReadOnlyList<string> options, int correct) =>
        new(instruction, $"Question: {question} Options: {string.Join(" ", options.Select((o, i) => $"({Letters[i]}) {o}"))}",
            $"The answer is {Letters[correct]}.", Letters[correct]);
}

/// <summary>
/// The default task: four words, three of them from one group; the options are always the same four
/// groups in the same order (like GLUE's fixed labels), and the answer is the group most of the words
/// belong to. The fourth word comes from any other group, so one word alone does not decide it.
/// Nothing in the pretraining text asks for the group of a list of words, so the base model answers
/// at chance.
/// </summary>
public static class DefaultTask
{
    public const string Instruction = "Answer with the letter of the correct option.";

    /// <summary>The option groups, in option order (A-D); the other groups only supply odd words.</summary>
    public static readonly string[] OptionGroups = ["earth", "weather", "plant", "animal"];

    public static TaskRecord Make(Random rnd)
    {
        int correct = rnd.Next(OptionGroups.Length);
        int g = Array.FindIndex(Words.Groups, x => x.Name == OptionGroups[correct]);
        var words = rnd.Shuffled(Words.Groups[g].Members).Take(3).ToList();
        int other = (g + 1 + rnd.Next(Words.Groups.Length - 1)) % Words.Groups.Length;
        words.Insert(rnd.Next(4), rnd.Pick(Words.Groups[other].Members));
        return Words.MultipleChoice(Instruction, $"Which group has most of {string.Join(", ", words)}?", OptionGroups, correct);
    }

    /// <summary>Train and held-out test records; no test input occurs in train.</summary>
    public static (List<TaskRecord> Train, List<TaskRecord> Test) Split(int seed, int train, int test)
    {
        var rnd = new Random(seed);
        var seen = new HashSet<string>();
        List<TaskRecord> Draw(int n)
        {
            var list = new List<TaskRecord>();
            while (list.Count < n)
            {
                var r = Make(rnd);
                if (seen.Add(r.Input)) list.Add(r);
            }
            return list;
        }
        var testSet = Draw(test);
        return (Draw(train), testSet);
    }
}

/// <summary>
/// The pretraining text: sentences about the groups, and records of OTHER tasks: naming the group of
/// one word, listing a group, telling energy from matter words, and spotting a number in a list
/// (the last two as multiple choice with fixed options, answered "The answer is X."). They teach
/// the template, the words and their groups, and the answer format; the default task's rule never
/// appears.
/// </summary>
public static class PretrainingCorpus
{
    /// <summary>
    /// One document: prose, or a task record in the Alpaca template, without the template's fixed
    /// preamble, or as a bare input and response. Only the full template and prose are scored on
    /// every token; elsewhere only the response is, which keeps the few informative tokens from
    /// drowning in predictable text.
    /// </summary>
    public static Document Next(Random rnd)
    {
        int kind = rnd.Next(20);
        if (kind < 3) return new Document("", Prose(rnd), ScorePrompt: true);
        var r = OtherTask(rnd);
        return kind switch
        {
            < 6 => new Document(Alpaca.Prompt(r.Instruction, r.Input), r.Output, ScorePrompt: true),
            < 12 => new Document($"### Instruction:\n{r.Instruction}\n\n### Input:\n{r.Input}\n\n### Response:\n", r.Output, ScorePrompt: false),
            _ => new Document($"{r.Input}\n", r.Output, ScorePrompt: false),
        };
    }

    public static string Render(TaskRecord r) => Alpaca.Prompt(r.Instruction, r.Input) + r.Output;

    static string Prose(Random rnd)
    {
        var sb = new StringBuilder();
        int sentences = rnd.Next(3, 7);
        for (int i = 0; i < sentences; i++)
        {
            if (sb.Length > 0) sb.Append(' ');
            sb.Append(Sentence(rnd));
        }
        return sb.ToString();
    }

    static string Sentence(Random rnd)
    {
        int g = rnd.Next(Words.Groups.Length);
        var (name, members) = Words.Groups[g];
        var shuffled = rnd.Shuffled(members);
        string a = shuffled[0], b = shuffled[1], c = shuffled[2];
        switch (rnd.Next(5))
        {
            case 0: return $"The {a} is a kind of {name}.";
            case 1: return $"The {a} and the {b} are {name} words.";
            case 2: return $"{Cap(a)}, {b} and {c} are in the {name} group.";
            case 3: return $"The {name} words are {string.Join(", ", shuffled)}.";
            default:
                int h = (g + 1 + rnd.Next(Words.Groups.Length - 1)) % Words.Groups.Length;
                return $"The {a} is {name}, but the {rnd.Pick(Words.Groups[h].Members)} is {Words.Groups[h].Name}.";
        }
    }

    static string Cap(string s) => char.ToUpperInvariant(s[0]) + s[1..];

    /// <summary>A record of one of the other tasks (<paramref name="kind"/> 0-7 picks one; null: at random).</summary>
    public static TaskRecord OtherTask(Random rnd, int? kind = null)
    {
        switch (kind ?? rnd.Next(8))
        {
            case 0 or 1 or 2:
                {
                    var (name, members) = rnd.Pick(Words.Groups);
                    string w = rnd.Pick(members);
                    return new TaskRecord("Name the group of the word.", $"Word: {w}", $"The {w} is in the {name} group.", name);
                }
            case 3:
                {
                    var (name, members) = rnd.Pick(Words.Groups);
                    return new TaskRecord("List the words of the group.", $"Group: {name}", string.Join(", ", rnd.Shuffled(members)) + ".", "");
                }
            case 4 or 5:
                {
                    int correct = rnd.Next(2);
                    string w = rnd.Pick(Words.Groups[4 + correct].Members);
                    return Words.MultipleChoice("Answer with the letter of the group of the word.", $"Is {w} an energy or a matter word?", ["energy", "matter"], correct);
                }
            default:
                {
                    var items = Enumerable.Range(0, rnd.Next(3, 5)).Select(_ => Words.AnyWord(rnd)).ToList();
                    int correct = rnd.Next(2);
                    if (correct == 0) items[rnd.Next(items.Count)] = rnd.Next(10, 100).ToString();
                    return Words.MultipleChoice("Answer with the letter of yes or no.", $"Is there a number in the list: {string.Join(", ", items)}?", ["yes", "no"], correct);
                }
        }
    }
}
