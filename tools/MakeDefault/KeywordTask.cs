using System.Text.Json;

namespace MakeDefault;

/// <summary>
/// The task `mola train` ships as its default: which of four groups (water, energy, earth, life) a word
/// belongs to, answered with the option's letter. The options are always the same four groups in the same
/// order, so the rule to learn is a word-to-letter mapping read from one position of the prompt; three
/// random context words make every record a new combination (test records never repeat a train record).
/// A short prompt template keeps records around 60 tokens with the project's 400-piece tokenizer.
/// </summary>
public static class KeywordTask
{
    internal static readonly Dictionary<string, string[]> Groups = new()
    {
        ["A"] = ["water", "river", "ocean", "liquid", "solution", "mixture", "weather"],
        ["B"] = ["energy", "light", "heat", "force", "motion", "sound", "magnet"],
        ["C"] = ["rock", "soil", "map", "north", "south", "east", "west"],
        ["D"] = ["plant", "animal", "cell", "trait", "inherited", "acquired", "learn"],
    };

    internal static readonly string[] Context = "value number score test layer model router adapter experts rank low train answer question option".Split(' ');

    public const string Instruction = "Answer the question with the letter of the correct option.";

    public const string TemplateJson = """
        {
          "description": "Short template of the embedded default task (the Alpaca preamble alone is ~150 tokens with this tokenizer)",
          "prompt_input": "{instruction}\n{input}\n### Response:\n",
          "prompt_no_input": "{instruction}\n### Response:\n",
          "response_split": "### Response:"
        }
        """;

    static Dictionary<string, string> Record(Random rnd)
    {
        string letter = "ABCD"[rnd.Next(4)].ToString();
        var words = Groups[letter];
        string word = words[rnd.Next(words.Length)];
        string context = string.Join(" ", Context.OrderBy(_ => rnd.Next()).Take(3));
        return new()
        {
            ["instruction"] = Instruction,
            ["input"] = $"Question: Which group does the word {word} belong to? Context: {context}. Options: (A) water (B) energy (C) earth (D) life",
            ["output"] = $"The answer is {letter}.",
            ["answer"] = letter,
        };
    }

    /// <summary>Writes DIR/default-task/{train,test}.jsonl and template.json.</summary>
    public static void Write(string assets, int seed, int trainCount, int testCount)
    {
        var rnd = new Random(seed);
        var train = Enumerable.Range(0, trainCount).Select(_ => JsonSerializer.Serialize(Record(rnd))).ToList();
        var seen = train.ToHashSet();
        var test = new List<string>();
        while (test.Count < testCount)
        {
            string r = JsonSerializer.Serialize(Record(rnd));
            if (seen.Add(r)) test.Add(r);
        }
        string dir = Path.Combine(assets, "default-task");
        Directory.CreateDirectory(dir);
        File.WriteAllLines(Path.Combine(dir, "train.jsonl"), train);
        File.WriteAllLines(Path.Combine(dir, "test.jsonl"), test);
        File.WriteAllText(Path.Combine(dir, "template.json"), TemplateJson + "\n");
        Console.WriteLine($"wrote {trainCount} train and {testCount} test records to {dir}");
    }
}
