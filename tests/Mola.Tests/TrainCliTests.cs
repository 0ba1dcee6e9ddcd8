using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Xunit;

namespace Mola.Tests;

[Trait("Category", "Slow")]
public class TrainCliTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");
    static readonly string Data = TestUtil.Fixture("train", "small.jsonl");

    /// <summary>A small run's command line; <paramref name="extra"/> adds options or replaces the defaults' values.</summary>
    internal static string[] Args(string output, params string[] extra)
    {
        var options = new List<(string Name, string? Value)>
        {
            ("--base-model", Llama), ("--data", Data), ("--output", output), ("--experts", "2,4,8"), ("--top-k", "1,2,2"), ("--rank", "4"),
            ("--batch-size", "4"), ("--micro-batch-size", "2"), ("--cutoff-len", "96"), ("--learning-rate", "3e-3"), ("--warmup-steps", "2"), ("--seed", "11"),
        };
        for (int i = 0; i < extra.Length; i++)
        {
            string? value = i + 1 < extra.Length && !extra[i + 1].StartsWith("--") ? extra[++i] : null;
            int at = options.FindIndex(o => o.Name == extra[value is null ? i : i - 1]);
            var item = (extra[value is null ? i : i - 1], value);
            if (at >= 0) options[at] = item; else options.Add(item);
        }
        return ["train", .. options.SelectMany(o => o.Value is null ? new[] { o.Name } : new[] { o.Name, o.Value })];
    }

    internal static List<JsonElement> Metrics(string dir) =>
        File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();

    [Fact]
    public void GradientCheckpointingIsRecordedAndTrainsTheSameRun()
    {
        string plain = TestUtil.TempDir(), ckpt = TestUtil.TempDir();
        string[] run = ["--max-steps", "3", "--save-steps", "0", "--dropout", "0.1"];
        Assert.Equal(0, CliRunner.Run(Args(plain, run)).ExitCode);
        Assert.Equal(0, CliRunner.Run(Args(ckpt, [.. run, "--gradient-checkpointing"])).ExitCode);
        var args = JsonNode.Parse(File.ReadAllText(Path.Combine(ckpt, "training_args.json")))!;
        Assert.True((bool)args["gradient_checkpointing"]!);
        Assert.False((bool)JsonNode.Parse(File.ReadAllText(Path.Combine(plain, "training_args.json")))!["gradient_checkpointing"]!);
        var a = Metrics(plain);
        var b = Metrics(ckpt);
        Assert.Equal(3, b.Count);
        for (int s = 0; s < 3; s++)
            Assert.Equal(a[s].GetProperty("loss").GetDouble(), b[s].GetProperty("loss").GetDouble(), 5);
    }

    [Fact]
    public void KilledAndResumedRunHasTheLossCurveOfAnUninterruptedOne()
    {
        // dropout on, so the restored RNG state matters too
        string whole = TestUtil.TempDir(), broken = TestUtil.TempDir();
        string[] run = ["--max-steps", "24", "--save-steps", "4", "--dropout", "0.1", "--val-set-size", "4", "--json"];
        var full = CliRunner.Run(Args(whole, run), TimeSpan.FromMinutes(4));
        Assert.True(full.ExitCode == 0, full.ToString());

        using (var p = CliRunner.Start(Args(broken, run)))
        {
            var clock = Stopwatch.StartNew();
            while (!Directory.Exists(Path.Combine(broken, "checkpoint-8")) && !p.HasExited && clock.Elapsed < TimeSpan.FromMinutes(3))
                Thread.Sleep(20);
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
        }
        Assert.True(Directory.Exists(Path.Combine(broken, "checkpoint-8")));
        Assert.False(File.Exists(Path.Combine(broken, "adapter_model.safetensors")), "the run finished before it was killed");

        var resumed = CliRunner.Run(Args(broken, [.. run, "--resume", "latest"]), TimeSpan.FromMinutes(4));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        var summary = System.Text.RegularExpressions.Regex.Match(resumed.Stdout + resumed.Stderr, @"trained steps (\d+) to 24 \((\d+) after resuming at step (\d+)\)");
        Assert.True(summary.Success, resumed.ToString());
        int at = int.Parse(summary.Groups[3].Value);
        Assert.Equal((at + 1, 24 - at), (int.Parse(summary.Groups[1].Value), int.Parse(summary.Groups[2].Value)));
        AssertSameRun(whole, broken, 24);
        Assert.Equal(full.LastJson().GetProperty("eval_loss").GetDouble(), resumed.LastJson().GetProperty("eval_loss").GetDouble());
    }

    /// <summary>Two finished runs have the same metrics (all but the timing) and bit-equal adapters.</summary>
    internal static void AssertSameRun(string whole, string resumed, int steps)
    {
        var a = Metrics(whole);
        var b = Metrics(resumed);
        Assert.Equal(steps, a.Count);
        Assert.Equal(a.Select(m => m.GetProperty("step").GetInt64()), b.Select(m => m.GetProperty("step").GetInt64()));
        foreach (var field in new[] { "loss", "ce_loss", "aux_loss", "lr", "grad_norm" })
            Assert.Equal(a.Select(m => m.GetProperty(field).GetDouble()), b.Select(m => m.GetProperty(field).GetDouble()));
        var wa = TestUtil.ReadAll(Path.Combine(whole, "adapter_model.safetensors"));
        var wb = TestUtil.ReadAll(Path.Combine(resumed, "adapter_model.safetensors"));
        Assert.All(wa, kv => Assert.True(TestUtil.BitEqual(kv.Value, wb[kv.Key]), kv.Key));
    }

    [Fact]
    public void SavedAdapterGivesPerplexityEqualToTheTrainersLastEvaluation()
    {
        // With the prompt trained on, no EOS and the cutoff at the model's 128 positions (where perplexity cuts), a validation example is exactly BOS + the template's full
        // text, which is what mola perplexity scores: the two losses must agree.
        string dir = TestUtil.TempDir();
        var train = CliRunner.Run(Args(dir, "--max-steps", "5", "--val-set-size", "6", "--add-eos", "false", "--train-on-inputs", "true", "--cutoff-len", "128", "--json"), TimeSpan.FromMinutes(3));
        Assert.True(train.ExitCode == 0, train.ToString());
        double evalLoss = train.LastJson().GetProperty("eval_loss").GetDouble();

        var records = Mola.Data.InstructionRecord.Load(Data);
        var (_, val) = Mola.Data.InstructionDataset.Split(records, 6, 11);
        string texts = Path.Combine(dir, "val.jsonl");
        File.WriteAllLines(texts, val.Select(r => JsonSerializer.Serialize(new { text = Mola.Data.PromptTemplate.Alpaca.Full(r) })));
        var ppl = CliRunner.Run("perplexity", "--base-model", Llama, "--adapter", dir, "--data", texts, "--json");
        Assert.True(ppl.ExitCode == 0, ppl.ToString());
        Assert.Equal(evalLoss, ppl.LastJson().GetProperty("nll").GetDouble(), 5);
        // and the adapter did change the model
        var basePpl = CliRunner.Run("perplexity", "--base-model", Llama, "--data", texts, "--json");
        Assert.NotEqual(basePpl.LastJson().GetProperty("nll").GetDouble(), evalLoss, 3);
    }

    [Fact]
    public void InitAdapterStartsFromTheTrainedWeights()
    {
        string first = TestUtil.TempDir(), second = TestUtil.TempDir();
        Assert.Equal(0, CliRunner.Run(Args(first, "--max-steps", "3", "--save-steps", "0"), TimeSpan.FromMinutes(2)).ExitCode);
        // learning rate ~0: the second task's adapter stays where the first one ended
        // (no --experts/--top-k/--rank: the init adapter's structure is used)
        var r = CliRunner.Run(["train", "--base-model", Llama, "--data", Data, "--output", second, "--batch-size", "4", "--micro-batch-size", "2",
            "--cutoff-len", "96", "--max-steps", "1", "--init-adapter", first, "--learning-rate", "1e-30", "--warmup-steps", "0"], TimeSpan.FromMinutes(2));
        Assert.True(r.ExitCode == 0, r.ToString());
        var a = TestUtil.ReadAll(Path.Combine(first, "adapter_model.safetensors"));
        var b = TestUtil.ReadAll(Path.Combine(second, "adapter_model.safetensors"));
        Assert.All(a, kv => Assert.True(TestUtil.MaxAbsDiff(kv.Value, b[kv.Key]) < 1e-20, kv.Key));
    }

    public static TheoryData<string, string[], string> BadInputs() => new()
    {
        { "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\" \"output\": \"d\"}\n", [], "data.jsonl:2: invalid JSON" },
        { "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n", [], "data.jsonl:2: missing field \"output\"" },
        { "\n\n", [], "no records" },
        { "{\"instruction\": \"a\", \"output\": \"b\"}\n", ["--micro-batch-size", "8"], "--micro-batch-size (8) is larger than --batch-size (4)" },
        { "{\"instruction\": \"a\", \"output\": \"b\"}\n", ["--experts", "2468"], "--experts" },
        { "{\"instruction\": \"a\", \"output\": \"b\"}\n", ["--top-k", "3"], "top-k 3 is more than its 2 experts" },
        { "{\"instruction\": \"a\", \"output\": \"b\"}\n", ["--init-adapter", "somewhere"], "--experts cannot be combined with --init-adapter" },
    };

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void BadInputIsOneClearErrorBeforeAnyDamage(string data, string[] extra, string message)
    {
        string dir = TestUtil.TempDir();
        string dataPath = Path.Combine(dir, "data.jsonl");
        File.WriteAllText(dataPath, data);
        string output = Path.Combine(dir, "out");
        var args = Args(output, extra).ToArray();
        args[Array.IndexOf(args, Data)] = dataPath;
        var r = CliRunner.Run(args);
        Assert.Contains(message, r.SingleErrorLine());
        Assert.False(File.Exists(Path.Combine(output, "adapter_model.safetensors")));
    }

    [Fact]
    public void AnOutputDirectoryHoldingAnotherRunIsRefusedUnlessOverwrite()
    {
        string dir = TestUtil.TempDir();
        Assert.Equal(0, CliRunner.Run(Args(dir, "--max-steps", "1")).ExitCode);
        byte[] before = File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors"));
        var again = CliRunner.Run(Args(dir, "--max-steps", "1", "--seed", "12"));
        Assert.Contains("holds another run", again.SingleErrorLine());
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors")));   // nothing damaged
        var forced = CliRunner.Run(Args(dir, "--max-steps", "1", "--seed", "12", "--overwrite"));
        Assert.Equal(0, forced.ExitCode);
        Assert.NotEqual(before, File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors")));
    }

    [Fact]
    public void OverwriteWithABadOptionOrFileLeavesThePreviousRunWhole()
    {
        string dir = TestUtil.TempDir();
        Assert.Equal(0, CliRunner.Run(Args(dir, "--max-steps", "2", "--save-steps", "1")).ExitCode);
        var before = Directory.GetFiles(dir, "*", SearchOption.AllDirectories).Order().ToList();
        byte[] adapter = File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors"));

        // An allocation that does not fit the model, then a data file that is not there: both found before anything is deleted.
        Assert.Contains("--experts 2,4,6,8: 4 values", CliRunner.Run(Args(dir, "--overwrite", "--experts", "2,4,6,8")).SingleErrorLine());
        string missing = Path.Combine(TestUtil.TempDir(), "missing.jsonl");
        var args = Args(dir, "--overwrite");
        args[Array.IndexOf(args, Data)] = missing;
        Assert.Contains("missing.jsonl", CliRunner.Run(args).SingleErrorLine());

        Assert.Equal(before, Directory.GetFiles(dir, "*", SearchOption.AllDirectories).Order().ToList());
        Assert.Equal(adapter, File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors")));
    }

    [Fact]
    public void LoraRefusesExpertOptionsAndSaysSoInItsSummary()
    {
        string dir = TestUtil.TempDir();
        var refused = CliRunner.Run(Args(dir, "--adapter-kind", "lora"));   // Args passes --experts and --top-k
        Assert.Contains("--experts and --top-k apply to --adapter-kind mola only", refused.SingleErrorLine());

        var args = Args(dir, "--adapter-kind", "lora", "--max-steps", "1").ToList();
        foreach (var name in new[] { "--experts", "--top-k" })
            args.RemoveRange(args.IndexOf(name), 2);
        var r = CliRunner.Run([.. args]);
        Assert.True(r.ExitCode == 0, r.ToString());
        // llama-tiny: 3 layers, rank 4 everywhere.
        var all = r.Stdout + r.Stderr;
        Assert.Contains("adapter lora: rank 4x3 (value x layers);", all);
        Assert.DoesNotContain("experts", all.Split('\n').Single(l => l.Contains("adapter lora:")));
    }

    [Fact]
    public void ACutoffPastTheModelsPositionsIsWarnedAbout()
    {
        var r = CliRunner.Run(Args(TestUtil.TempDir(), "--max-steps", "1", "--cutoff-len", "200"));   // llama-tiny: 128 positions
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("warning: --cutoff-len 200 is past the model's 128 positions (max_position_embeddings)", r.Stdout + r.Stderr);
    }

    [Fact]
    public void AWarmUpLongerThanTheRunIsWarnedAbout()
    {
        // 3 steps, warm-up 5: the schedule gives steps 0, 1, 2 the factors 0, 1/5, 2/5, so lr 3e-3 peaks at 1.2e-3.
        var warned = CliRunner.Run(Args(TestUtil.TempDir(), "--max-steps", "3", "--warmup-steps", "5"));
        Assert.True(warned.ExitCode == 0, warned.ToString());
        Assert.Contains("warning: --warmup-steps 5 is not below the run's 3 optimizer steps, so the learning rate peaks at 0.0012 instead of 0.003",
            warned.Stdout + warned.Stderr);
        var quiet = CliRunner.Run(Args(TestUtil.TempDir(), "--max-steps", "3", "--warmup-steps", "2"));
        Assert.True(quiet.ExitCode == 0, quiet.ToString());
        Assert.DoesNotContain("warning:", quiet.Stdout + quiet.Stderr);
    }

    /// <summary>Every file under <paramref name="dir"/> with its bytes, to compare a directory before and after.</summary>
    internal static Dictionary<string, string> Snapshot(string dir) =>
        Directory.GetFiles(dir, "*", SearchOption.AllDirectories).ToDictionary(f => Path.GetRelativePath(dir, f), f => Convert.ToHexString(File.ReadAllBytes(f)));

    [Theory]
    [InlineData("--batch-size", "2", "batch_size is 2, the checkpoint's 4")]
    [InlineData("--learning-rate", "1e-3", "learning_rate is 0.001, the checkpoint's 0.003")]
    [InlineData("--top-k", "1", "top-k, alpha, dropout or aux-loss coefficient differs")]
    [InlineData("--alpha", "64", "top-k, alpha, dropout or aux-loss coefficient differs")]
    public void AResumeWithOtherSettingsIsRefusedAndChangesNothing(string option, string value, string message)
    {
        // A finished 4-step run with a checkpoint at step 2. With --batch-size 2 the same data makes a different
        // schedule; before the check a resume like that 'finished' at once and replaced the adapter with step 2's.
        string dir = TestUtil.TempDir();
        Assert.Equal(0, CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2")).ExitCode);
        var before = Snapshot(dir);
        var r = CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2", "--resume", "latest", option, value));
        Assert.Contains(message, r.SingleErrorLine());
        Assert.Equal(before, Snapshot(dir));   // training_args.json and metrics.jsonl included
    }

    [Fact]
    public void AResumeComparesTheRunDirectorysTrainingArgs()
    {
        // The record a resume compares is training_args.json: a setting changed there (as if the run had been made
        // with it) is refused with the same arguments; so is one that shapes the data (cutoff 64 instead of 96).
        string dir = TestUtil.TempDir();
        string[] run = ["--max-steps", "4", "--save-steps", "2"];
        Assert.Equal(0, CliRunner.Run(Args(dir, run)).ExitCode);
        var cutoff = CliRunner.Run(Args(dir, [.. run, "--resume", "latest", "--cutoff-len", "64"]));
        Assert.Contains("cutoff_len is 64, the checkpoint's 96", cutoff.SingleErrorLine());
        string argsPath = Path.Combine(dir, "training_args.json");
        var args = JsonNode.Parse(File.ReadAllText(argsPath))!.AsObject();
        Assert.Equal(4, (int)args["total_steps"]!);
        args["seed"] = 12;
        File.WriteAllText(argsPath, args.ToJsonString());
        var before = Snapshot(dir);
        var seed = CliRunner.Run(Args(dir, [.. run, "--resume", "latest"]));
        Assert.Contains("seed is 11, the checkpoint's 12", seed.SingleErrorLine());
        Assert.Equal(before, Snapshot(dir));
    }

    [Fact]
    public void TheAdapterPrecisionIsRecordedAndAResumeWithAnotherIsRefused()
    {
        // Over a bfloat16 base the default is mixed, recorded as such; a resume in float32 would continue another
        // computation: refused, nothing touched.
        string dir = TestUtil.TempDir();
        string[] run = ["--max-steps", "4", "--save-steps", "2", "--dtype", "bfloat16"];
        Assert.Equal(0, CliRunner.Run(Args(dir, run)).ExitCode);
        string argsPath = Path.Combine(dir, "training_args.json");
        var args = JsonNode.Parse(File.ReadAllText(argsPath))!.AsObject();
        Assert.Equal("mixed", (string?)args["adapter_precision"]);
        var before = Snapshot(dir);
        var refused = CliRunner.Run(Args(dir, [.. run, "--resume", "latest", "--adapter-precision", "float32"]));
        Assert.Contains("the checkpoint was trained with --adapter-precision mixed, this run's is float32", refused.SingleErrorLine());
        Assert.Equal(before, Snapshot(dir));

        // A record from before the setting existed computed its adapter in float32: the default (mixed) is refused
        // with the value to give, and that value continues it.
        args.Remove("adapter_precision");
        File.WriteAllText(argsPath, args.ToJsonString());
        var old = CliRunner.Run(Args(dir, [.. run, "--resume", "latest"]));
        Assert.Contains("trained with --adapter-precision float32, this run's is mixed (a resumed run continues the same training: give --adapter-precision float32",
            old.SingleErrorLine());
        var resumed = CliRunner.Run(Args(dir, [.. run, "--resume", "latest", "--adapter-precision", "float32"]));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        Assert.Equal("float32", (string?)JsonNode.Parse(File.ReadAllText(argsPath))!["adapter_precision"]);

        // Over a float32 base mixed is float32: recorded so, and a resume may give either.
        string dir32 = TestUtil.TempDir();
        string[] run32 = ["--max-steps", "4", "--save-steps", "2"];
        Assert.Equal(0, CliRunner.Run(Args(dir32, run32)).ExitCode);
        Assert.Equal("float32", (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(dir32, "training_args.json")))!["adapter_precision"]);
        var either = CliRunner.Run(Args(dir32, [.. run32, "--resume", "latest", "--adapter-precision", "float32"]));
        Assert.True(either.ExitCode == 0, either.ToString());
    }

    [Fact]
    public void AResumeDropsAHalfWrittenLastMetricsLineAndRefusesABrokenOneInTheMiddle()
    {
        string dir = TestUtil.TempDir();
        string[] run = ["--max-steps", "4", "--save-steps", "2"];
        Assert.Equal(0, CliRunner.Run(Args(dir, run)).ExitCode);
        string metrics = Path.Combine(dir, "metrics.jsonl");
        var lines = File.ReadAllLines(metrics);
        Assert.Equal(4, lines.Length);

        // A run killed while appending step 5's line (as if it had gone on): the resume drops it and goes on.
        File.AppendAllText(metrics, lines[3][..20]);
        var resumed = CliRunner.Run(Args(dir, [.. run, "--resume", "latest"]));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        // Steps 3 and 4 again, exactly (all but the timing).
        static string NoTiming(string line) { var o = JsonNode.Parse(line)!.AsObject(); o.Remove("tokens_per_second"); return o.ToJsonString(); }
        Assert.Equal(lines.Select(NoTiming), File.ReadAllLines(metrics).Select(NoTiming));

        // A line that is not a metrics line before the end is not ours to drop: named, file untouched.
        File.WriteAllLines(metrics, [lines[0], "{\"foo\": 1}", .. lines[1..]]);
        var before = File.ReadAllText(metrics);
        var refused = CliRunner.Run(Args(dir, [.. run, "--resume", "latest"]));
        Assert.Contains("metrics.jsonl:2: not a metrics line", refused.SingleErrorLine());
        Assert.Equal(before, File.ReadAllText(metrics));
    }

    [Fact]
    public void ADamagedTrainerStateIsNamed()
    {
        string dir = TestUtil.TempDir();
        Assert.Equal(0, CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2")).ExitCode);
        string state = Path.Combine(dir, "checkpoint-2", "trainer_state.json");
        File.WriteAllText(state, File.ReadAllText(state)[..10]);
        var r = CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2", "--resume", "latest"));
        Assert.Contains("trainer_state.json: invalid JSON", r.SingleErrorLine());
        File.WriteAllText(state, "{\"step\": \"2\", \"epoch\": 0, \"micro_batch\": 4}");
        Assert.Contains("\"step\" must be a non-negative integer", CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2", "--resume", "latest")).SingleErrorLine());
    }

    [Fact]
    public void EmbeddedDefaultRunsFromTheShippedAssets()
    {
        // A short version of `mola train` with no model and no data: the assets are found next to the
        // program, accuracy is measured before and after, the adapter is an inverted triangle.
        string dir = TestUtil.TempDir();
        var r = CliRunner.Run(["train", "--output", dir, "--max-steps", "3", "--json"], TimeSpan.FromMinutes(4));
        Assert.True(r.ExitCode == 0, r.ToString());
        var j = r.LastJson();
        Assert.Equal(3, j.GetProperty("steps").GetInt64());
        foreach (var field in new[] { "accuracy_before", "accuracy_after" })
            Assert.InRange(j.GetProperty(field).GetDouble(), 0.0, 1.0);
        Assert.Contains("held-out accuracy before training", r.Stderr);
        var cfg = Mola.Adapters.AdapterConfig.Load(dir);
        Assert.Equal(new[] { 2, 4, 6, 8 }, cfg.NumExperts);
        Assert.Equal(3, File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length);
    }
}
