using System.Text;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Analysis;
using Mola.Data;
using Mola.Evaluation;
using Mola.Models;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Mola.Tests.Fuzz;

/// <summary>How many cases a fuzz target runs: its share of about 1,000 in CI, or of MOLA_FUZZ_CASES for a long run
/// (README, "Strict inputs and the fuzz suite").</summary>
static class FuzzBudget
{
    const int CiTotal = 1000;   // the sum of the targets' shares below

    public static int Cases(int ciCases)
    {
        string? total = Environment.GetEnvironmentVariable("MOLA_FUZZ_CASES");
        double scale = total is null ? 1 : int.Parse(total) / (double)CiTotal;
        return Math.Max(1, (int)Math.Round(ciCases * scale));
    }

    /// <summary>Runs <paramref name="cases"/> seeded cases of one target. A case is accepted (no exception) or a clean
    /// error (a one-line MolaException naming <c>MustName</c>); anything else, or a case running past 20 s, fails the
    /// test with its seed and input. Prints the figures.</summary>
    public static void Run(ITestOutputHelper log, string target, int cases, Func<int, (string Input, string MustName, Action Parse)> makeCase)
    {
        int accepted = 0, clean = 0;
        var failures = new List<string>();
        var examples = new List<string>();
        for (int seed = 0; seed < cases; seed++)
        {
            var (input, mustName, parse) = makeCase(seed);
            var run = Task.Run(parse);
            try
            {
                if (!run.Wait(TimeSpan.FromSeconds(20))) failures.Add($"seed {seed}: still running after 20 s; input: {Show(input)}");
                else accepted++;
            }
            catch (AggregateException a) when (a.InnerException is MolaException e && !e.Message.Contains('\n') && e.Message.Contains(mustName))
            {
                clean++;
                examples.Add($"seed {seed}: {e.Message}");
            }
            catch (AggregateException a)
            {
                var e = a.InnerException!;
                string where = e.StackTrace?.Split('\n').FirstOrDefault()?.Trim() ?? "";
                failures.Add($"seed {seed}: {e.GetType().Name}: {e.Message.Split('\n')[0]} ({where}); input: {Show(input)}");
            }
        }
        if (Environment.GetEnvironmentVariable("MOLA_FUZZ_SHOW") is string show && int.TryParse(show, out int n))
            foreach (var line in examples.Take(n)) log.WriteLine(line);
        string figures = $"fuzz {target}: {cases} inputs, {clean} clean errors, {accepted} accepted, {failures.Count} anything else";
        log.WriteLine(figures);
        Console.WriteLine(figures);   // the long run reads these lines (dotnet test --logger "console;verbosity=detailed")
        Assert.True(failures.Count == 0, $"{figures}\n{string.Join("\n", failures.Take(10))}");
    }

    /// <summary>The input in a form a failure message can carry: escaped, cut at 600 characters.</summary>
    public static string Show(string input)
    {
        var sb = new StringBuilder();
        foreach (char c in input.Length > 600 ? input[..600] + "..." : input)
            sb.Append(c is < ' ' or > '~' ? $"\\u{(int)c:x4}" : c.ToString());
        return sb.ToString();
    }

    public static string Show(byte[] bytes) => Show(Encoding.Latin1.GetString(bytes));
}

/// <summary>
/// Item 7 of issue 21: seeded mutations of valid inputs through every file reader. Each outcome must be success
/// or one MolaException line naming the file; an exception of another type, a multi-line message or a hang fails
/// with the seed and the input (replay: the case is a pure function of its seed).
/// </summary>
public sealed class FuzzTests(ITestOutputHelper log) : IDisposable
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    // A long run writes tens of thousands of files: each test removes its own.
    readonly List<string> _scratch = [];

    string Scratch()
    {
        string dir = TestUtil.TempDir();
        _scratch.Add(dir);
        return dir;
    }

    public void Dispose()
    {
        foreach (var dir in _scratch) Directory.Delete(dir, recursive: true);
    }

    /// <summary>A small file of the format's every feature: metadata, three dtypes, a scalar, an empty tensor.</summary>
    byte[] SafeTensorsSeed()
    {
        string path = Path.Combine(Scratch(), "seed.safetensors");
        using (var scope = NewDisposeScope())
            SafeTensorsFile.Save(path, new Dictionary<string, Tensor>
            {
                ["model.norm.weight"] = linspace(-2, 2, 6),
                ["a.bf16"] = ones(2, 3).to(ScalarType.BFloat16),
                ["b.i64"] = arange(4L),
                ["c.scalar"] = tensor(2.5f),
                ["d.empty"] = zeros(0, 3),
            }, new Dictionary<string, string> { ["format"] = "pt" });
        return File.ReadAllBytes(path);
    }

    [Fact]
    public void SafeTensorsReader()
    {
        byte[] seed = SafeTensorsSeed();
        int headerEnd = 8 + (int)BitConverter.ToUInt64(seed);
        string dir = Scratch();
        FuzzBudget.Run(log, "safetensors", FuzzBudget.Cases(250), s =>
        {
            var m = new Mutator(s);
            byte[] file;
            switch (m.Next(10))
            {
                case < 6:
                    // The header as JSON, with a correct length prefix (most cases: reach the checks of the entries).
                    byte[] header = m.MutateJson(seed[8..headerEnd]);
                    file = [.. BitConverter.GetBytes((ulong)header.Length), .. header, .. seed[headerEnd..]];
                    break;
                case < 8: file = m.MutateBytes(seed, 0, headerEnd); break;        // the header's bytes, the length prefix included
                default: file = m.MutateBytes(seed, headerEnd, seed.Length); break; // the data
            }
            string path = Path.Combine(dir, $"case{s}.safetensors");
            File.WriteAllBytes(path, file);
            return (FuzzBudget.Show(file), path, () =>
            {
                using var f = SafeTensorsFile.Open(path);
                foreach (var name in f.Tensors.Keys)
                {
                    f.RequireFinite(name);
                    f.Read(name).Dispose();
                }
            }
            );
        });
    }

    [Fact]
    public void ModelConfigReader()
    {
        byte[] seed = File.ReadAllBytes(Path.Combine(Llama, "config.json"));
        string dir = Scratch();
        FuzzBudget.Run(log, "config.json", FuzzBudget.Cases(125), s =>
        {
            byte[] text = new Mutator(s).MutateJson(seed);
            string path = Path.Combine(dir, $"config{s}.json");
            File.WriteAllBytes(path, text);
            return (FuzzBudget.Show(text), path, () => ModelConfig.Load(path));
        });
    }

    [Fact]
    public void AdapterConfigReaders()
    {
        byte[] seed = File.ReadAllBytes(TestUtil.Fixture("llama-tiny-mola", "adapter_config.json"));
        string root = Scratch();
        FuzzBudget.Run(log, "adapter_config.json", FuzzBudget.Cases(125), s =>
        {
            byte[] text = new Mutator(s).MutateJson(seed);
            string dir = Directory.CreateDirectory(Path.Combine(root, $"a{s}")).FullName, path = Path.Combine(dir, "adapter_config.json");
            File.WriteAllBytes(path, text);
            // Both readers: the adapter's own and the analysis's lighter one.
            return (FuzzBudget.Show(text), path, () =>
            {
                AdapterConfig.Load(dir).ForModel(3).Validate(path, 3);
                AdapterFile.ReadKindAndExperts(path);
            }
            );
        });
    }

    [Fact]
    public void ShardIndexReader()
    {
        byte[] seed = File.ReadAllBytes(Path.Combine(Llama, "model.safetensors.index.json"));
        var config = ModelConfig.Load(Llama);
        string root = Scratch();
        FuzzBudget.Run(log, "model.safetensors.index.json", FuzzBudget.Cases(100), s =>
        {
            byte[] text = new Mutator(s).MutateJson(seed);
            string dir = Directory.CreateDirectory(Path.Combine(root, $"m{s}")).FullName;
            foreach (var shard in Directory.GetFiles(Llama, "model-*.safetensors"))
                File.CreateSymbolicLink(Path.Combine(dir, Path.GetFileName(shard)), shard);
            File.WriteAllBytes(Path.Combine(dir, "model.safetensors.index.json"), text);
            return (FuzzBudget.Show(text), dir, () =>
            {
                using var ckpt = Checkpoint.Open(dir);
                ckpt.CheckAgainst(config, "config.json");
            }
            );
        });
    }

    [Fact]
    public void PromptTemplateReader()
    {
        var alpaca = PromptTemplate.Alpaca;
        byte[] seed = Encoding.UTF8.GetBytes(new JsonObject
        {
            ["description"] = alpaca.Description,
            ["prompt_input"] = alpaca.PromptInput,
            ["prompt_no_input"] = alpaca.PromptNoInput,
            ["response_split"] = alpaca.ResponseSplit,
        }.ToJsonString());
        string dir = Scratch();
        FuzzBudget.Run(log, "template", FuzzBudget.Cases(100), s =>
        {
            var m = new Mutator(s);
            // Half the cases edit the placeholders' braces, which the JSON-level edits rarely touch.
            byte[] text = m.Next(2) == 0 ? m.MutateJson(seed) : m.MutateBytes(seed, 0, seed.Length);
            string path = Path.Combine(dir, $"t{s}.json");
            File.WriteAllBytes(path, text);
            return (FuzzBudget.Show(text), path, () =>
            {
                var t = PromptTemplate.Load(path);
                t.ExtractResponse(t.Full(new InstructionRecord("an {instruction}", "in}put", "out")));
                t.Prompt("x");
            }
            );
        });
    }

    // A small tokenizer.json of the Llama layout: BPE, spaces made ▁ by the normalizer.
    const string TokenizerJson = """
        {"added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true},
          {"id": 2, "content": "</s>", "special": true}],
         "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
          {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
         "pre_tokenizer": null,
         "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "byte_fallback": false, "fuse_unk": true,
          "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3, "a": 4, "b": 5, "\u2581a": 6, "ab": 7, "\u2581ab": 8},
          "merges": ["\u2581 a", ["a", "b"], "\u2581a b"]}}
        """;

    [Fact]
    public void TokenizerReaders()
    {
        byte[] json = Encoding.UTF8.GetBytes(TokenizerJson);
        byte[] model = File.ReadAllBytes(Path.Combine(Llama, "tokenizer.model"));
        string dir = Scratch();
        FuzzBudget.Run(log, "tokenizer.json / tokenizer.model", FuzzBudget.Cases(75), s =>
        {
            var m = new Mutator(s);
            bool isJson = m.Next(2) == 0;
            byte[] file = isJson ? m.MutateJson(json) : m.MutateBytes(model, 0, model.Length);
            string path = Path.Combine(dir, isJson ? $"t{s}.tokenizer.json" : $"t{s}.model");
            File.WriteAllBytes(path, file);
            return (FuzzBudget.Show(file), path, () =>
            {
                var tok = Mola.Tokenization.MolaTokenizer.Load(path);
                tok.Decode(tok.Encode("a b ab A", bos: true));
            }
            );
        });
    }

    [Theory]
    // An id of 2^31 - 1: the tables were sized by it (an overflow, or gigabytes) before any check.
    [InlineData("\"ab\": 7,", "\"ab\": 2147483647,", "id 2147483647 is past the 9 pieces (ids must run from 0 to 8)")]
    // A lone surrogate in a key failed inside the parser with an unnamed InvalidOperationException.
    [InlineData("\"special\": true}, {\"id\": 1", "\"\\ud800\": true}, {\"id\": 1", "a string is not valid text")]
    // A normalizer without "type" was quoted over several lines.
    [InlineData("{\"type\": \"Sequence\", \"normalizers\"", "{\"kind\": \"Sequence\",\n \"normalizers\"", "normalizer {\"kind\": \"Sequence\", \"normalizers\"")]
    public void TokenizerJsonCasesTheFuzzSuiteFound(string from, string to, string message)
    {
        string path = Path.Combine(Scratch(), "tokenizer.json");
        string text = TokenizerJson.Replace(from, to);
        Assert.NotEqual(TokenizerJson, text);
        File.WriteAllText(path, text);
        var e = Assert.Throws<MolaException>(() => Mola.Tokenization.MolaTokenizer.Load(path));
        Assert.StartsWith(path, e.Message);
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void TheTokenizerJsonSeedIsValid()
    {
        // Else every mutation would fail for the seed's own fault and the target would test nothing.
        string path = Path.Combine(Scratch(), "tokenizer.json");
        File.WriteAllText(path, TokenizerJson);
        var tok = Mola.Tokenization.MolaTokenizer.Load(path);
        Assert.Equal([1, 8, 3, 5, 6], tok.Encode("ab b a", bos: true));
    }

    [Fact]
    public void DataReaders()
    {
        byte[] jsonl = Encoding.UTF8.GetBytes(string.Join("\n", File.ReadLines(TestUtil.Fixture("train", "small.jsonl")).Take(3)) + "\n");
        byte[] array = File.ReadAllBytes(Path.Combine(TestUtil.ExamplesDir(), "rte.json"));
        byte[] texts = File.ReadAllBytes(Path.Combine(TestUtil.ExamplesDir(), "perplexity.jsonl"));
        string dir = Scratch();
        FuzzBudget.Run(log, "data (JSON/JSONL records)", FuzzBudget.Cases(150), s =>
        {
            var m = new Mutator(s);
            int kind = m.Next(3);
            byte[] seed = kind switch { 0 => jsonl, 1 => array, _ => texts };
            byte[] text = m.MutateJson(seed);
            string path = Path.Combine(dir, $"d{s}.json");
            File.WriteAllBytes(path, text);
            return (FuzzBudget.Show(text), path, () =>
            {
                if (kind == 2) Perplexity.ReadTexts(path);
                else InstructionRecord.Load(path);
            }
            );
        });
    }
}

/// <summary>Mutated argument lists through the real command tree, in-process (<c>Cli.Execute</c>): each run must exit
/// 0, or 1 with exactly one <c>error:</c> line last on stderr and no stack trace, native frame or exception type.</summary>
[Collection(RunsAloneCollection.Name)]   // redirects Console, which every test in the process shares
public class CliFuzzTests(ITestOutputHelper log)
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    static readonly string[] Values =
    [
        "", "NaN", "-1", "0", "1", "1e-300", "1e300", "Infinity", "-Infinity", "2147483648", "-2147483648", "9999999999", "0.5",
        "abc", "1,2", "2,4,8", "2468", "square:2147483647", "square:0", "triangle", "8642", "all", "q_proj,zzz", "q_proj", "lora",
        "\u0000", "\ud800", "/nonexistent", "cuda", "float16", "bf16", "int8", "--json", "-", "--", "--help", "x=y", " ",
    ];

    [Fact]
    public void OptionParser()
    {
        string texts = Path.Combine(TestUtil.ExamplesDir(), "perplexity.jsonl");
        string[][] seeds =
        [
            ["params", "--base-model", Llama, "--experts", "2,4,8", "--top-k", "1", "--rank", "4", "--targets", "all", "--adapter-kind", "mola",
                "--micro-batch-size", "2", "--cutoff-len", "32", "--dtype", "bfloat16", "--json"],
            ["generate", "--base-model", Llama, "--prompt", "the cell", "--temperature", "0.7", "--top-p", "0.9", "--top-k-sampling", "5", "--seed", "3", "--json"],
            ["generate", "--base-model", Llama, "--instruction", "Name a rock.", "--input", "river", "--template", "alpaca", "--greedy"],
            ["perplexity", "--base-model", Llama, "--data", texts, "--batch-size", "2", "--json"],
        ];
        FuzzBudget.Run(log, "command line", FuzzBudget.Cases(75), s =>
        {
            var m = new Mutator(s);
            var seed = m.Pick(seeds);
            var args = Mutate(m, seed.ToList(), seed.Where(a => a.StartsWith("--")).ToList());
            // Generation is bounded here: a mutated length asks for work, not for a failure.
            if (args.Count > 0 && args[0] == "generate") args.AddRange(["--max-new-tokens", "2"]);
            string shown = string.Join(" ", args.Select(a => a.Contains(' ') || a.Length == 0 ? $"'{a}'" : a));
            return (shown, "", () => RunInProcess(args.ToArray(), shown));
        });
    }

    /// <summary>Mostly values swapped for others (which reach the commands' own checks); sometimes an option dropped,
    /// repeated or added, or a raw token edit (which mostly reaches the parser's).</summary>
    static List<string> Mutate(Mutator m, List<string> args, List<string> options)
    {
        int edits = 1 + m.Next(3);
        for (int i = 0; i < edits && args.Count > 1; i++)
        {
            var values = Enumerable.Range(1, args.Count - 1).Where(j => !args[j].StartsWith("--")).ToList();
            var named = Enumerable.Range(1, args.Count - 1).Where(j => args[j].StartsWith("--")).ToList();
            int at = 1 + m.Next(args.Count - 1);   // the command name stays
            int pair = named.Count > 0 ? m.Pick(named) : at;
            int width = pair + 1 < args.Count && !args[pair + 1].StartsWith("--") ? 2 : 1;
            switch (m.Next(20))
            {
                case < 12 when values.Count > 0: args[m.Pick(values)] = m.Pick(Values); break;
                case < 14: args.RemoveRange(pair, width); break;
                case < 16: args.InsertRange(pair, args.GetRange(pair, width)); break;
                case < 18: args.InsertRange(at, [m.Pick(options), m.Pick(Values)]); break;
                case 18: args[at] = m.Pick(options); break;
                default: args.RemoveAt(at); break;
            }
        }
        return args;
    }

    static void RunInProcess(string[] args, string shown)
    {
        var r = CliRunner.RunInProcess(args);
        if (r.ExitCode == 0) return;
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToList();
        var errors = lines.Where(l => l.StartsWith("error: ", StringComparison.Ordinal)).ToList();
        string all = r.Stdout + "\n" + r.Stderr;
        bool clean = r.ExitCode == 1 && errors.Count == 1 && lines[^1] == errors[0]
            && !all.Contains("   at ") && !all.Contains("frame #") && !errors[0].Contains("Exception") && !errors[0].Contains("System.");
        if (!clean) throw new InvalidOperationException($"`mola {shown}` exit {r.ExitCode}: {all.ReplaceLineEndings(" | ")}");
        throw new MolaException(errors[0]);
    }
}
