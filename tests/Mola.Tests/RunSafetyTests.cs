using System.Diagnostics;
using System.Text.RegularExpressions;
using Mola.Training;
using Xunit;
using static Mola.Tests.TrainCliTests;

namespace Mola.Tests;

/// <summary>Nothing lost: overwrite safety, one writer per run directory, signals, tidying after faults, disk full and
/// allocations refused before they are made. Each test reproduces a fault found on the CLI as a user meets it.</summary>
[Trait("Category", "Slow")]
public class RunSafetyTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    /// <summary>A finished 4-step run with a checkpoint at step 2.</summary>
    static string FinishedRun()
    {
        string dir = TestUtil.TempDir();
        var r = CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2"));
        Assert.True(r.ExitCode == 0, r.ToString());
        return dir;
    }

    /// <summary>Whether this process ignores signal <paramref name="number"/> (Linux: the SigIgn mask in /proc/self/status).</summary>
    static bool Ignored(int number)
    {
        if (!File.Exists("/proc/self/status")) return false;
        string? mask = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal))?["SigIgn:".Length..].Trim();
        return mask is not null && (Convert.ToUInt64(mask, 16) & (1UL << (number - 1))) != 0;
    }

    static int MetricsLines(string dir)
    {
        try { return File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length; }
        catch (IOException) { return 0; }
    }

    [Theory]
    [InlineData("--alpha", "NaN", "--alpha must be a positive finite number, got NaN")]
    [InlineData("--learning-rate", "NaN", "--learning-rate must be a positive finite number, got NaN")]
    [InlineData("--dropout", "NaN", "--dropout must be in [0, 1), got NaN")]
    [InlineData("--aux-loss-coef", "Infinity", "--aux-loss-coef must be a finite number, 0 or more, got Infinity")]
    [InlineData("--learning-rate", "1e30", "the run it was to replace is restored in")]   // parses, trains, diverges at step 3
    public void AnOverwriteThatFailsLeavesThePreviousRunByteForByte(string option, string value, string message)
    {
        string dir = FinishedRun();
        var before = Snapshot(dir);
        var r = CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2", "--overwrite", option, value));
        Assert.Contains(message, value == "1e30" ? r.LastErrorLine() : r.SingleErrorLine());
        Assert.Equal(before, Snapshot(dir));
        Assert.False(Directory.Exists(Path.Combine(dir, RunDirectory.PreviousRun)));
    }

    [Fact]
    public void AnOverwriteKilledMidwayGetsThePreviousRunBackAtTheNextStart()
    {
        string dir = FinishedRun();
        var before = Snapshot(dir);
        using (var p = CliRunner.Start(Args(dir, "--max-steps", "5000", "--save-steps", "3", "--overwrite")))
        {
            var clock = Stopwatch.StartNew();
            while (!Directory.Exists(Path.Combine(dir, "checkpoint-3")) && !p.HasExited && clock.Elapsed < TimeSpan.FromMinutes(2)) Thread.Sleep(10);
            p.Kill();   // SIGKILL: no chance to restore anything
            p.WaitForExit();
        }
        Assert.True(Directory.Exists(Path.Combine(dir, RunDirectory.PreviousRun)), "the previous run was not kept aside");
        Assert.False(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));

        // The next start that does not resume the unfinished run brings the finished one back (and refuses to mix them).
        var r = CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "2"));
        Assert.Contains("holds another run", r.SingleErrorLine());
        Assert.Contains("restored the run that an unfinished --overwrite had replaced", r.Stdout);
        Assert.Equal(before, Snapshot(dir));
    }

    [Fact]
    public void AnOutputThatCannotBeCreatedIsRefusedBeforeTheModelLoads()
    {
        var empty = CliRunner.Run(Args(""));
        Assert.Contains("--output: empty (expected a directory path)", empty.SingleErrorLine());

        string file = Path.Combine(TestUtil.TempDir(), "a-file");
        File.WriteAllText(file, "x");
        var r = CliRunner.Run(Args(Path.Combine(file, "run")));
        Assert.Contains($"cannot be created: {file} is a file, not a directory", r.SingleErrorLine());
        Assert.Equal("", r.Stdout);   // no "base ..." line: the model never loaded
    }

    [SkippableFact]
    public void AReadOnlyOutputIsNamedBeforeTheModelLoads()
    {
        using var mount = Tmpfs.Mount("size=1m,ro");
        var r = CliRunner.Run(Args(Path.Combine(mount.Path, "run")));
        Assert.Contains($"--output {Path.Combine(mount.Path, "run")}: cannot be created or written (Read-only file system)", r.SingleErrorLine());
        Assert.Equal("", r.Stdout);
    }

    [Fact]
    public void ASecondWriterIsRefusedAtOnceWhateverItsOptions()
    {
        string dir = FinishedRun();
        var before = Snapshot(dir);
        using (RunLock.Acquire(dir))   // another writer holds the directory
        {
            foreach (var extra in new[] { Array.Empty<string>(), ["--overwrite"], ["--resume", "latest"] })
            {
                var r = CliRunner.Run(Args(dir, [.. extra, "--max-steps", "4", "--save-steps", "2"]));
                Assert.Contains($"--output {dir}: another mola process is writing this run directory", r.SingleErrorLine());
                Assert.Equal("", r.Stdout);   // refused before the model loaded
            }
            Assert.Throws<MolaException>(() => RunLock.Acquire(dir));   // in one process too
        }
        Assert.Equal(before, Snapshot(dir));
        Assert.Equal(0, CliRunner.Run(Args(dir, "--max-steps", "1", "--overwrite")).ExitCode);   // released
    }

    [Fact]
    public void TwoTrainProcessesCannotShareAnOutputAndAKilledOneLeavesNoStaleLock()
    {
        string dir = TestUtil.TempDir();
        using (var first = CliRunner.Start(Args(dir, "--max-steps", "5000", "--save-steps", "0")))
        {
            var clock = Stopwatch.StartNew();
            while (MetricsLines(dir) < 2 && !first.HasExited && clock.Elapsed < TimeSpan.FromMinutes(2)) Thread.Sleep(10);
            Assert.False(first.HasExited);
            var second = CliRunner.Run(Args(dir, "--max-steps", "3", "--overwrite"));
            Assert.Contains("another mola process is writing this run directory", second.SingleErrorLine());
            Assert.Throws<MolaException>(() => RunLock.Acquire(dir));
            first.Kill();   // kill -9: the kernel drops the lock with the process
            first.WaitForExit();
        }
        using (RunLock.Acquire(dir)) { }
        var resumed = CliRunner.Run(Args(dir, "--max-steps", "3", "--overwrite"));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
    }

    [SkippableTheory]
    [InlineData("INT", 130)]
    [InlineData("TERM", 143)]
    public void ASignalSavesTheStepAndTheResumedRunEqualsAnUninterruptedOne(string signal, int exitCode)
    {
        // A shell without job control starts background commands with SIGINT ignored, and children inherit that (as they
        // should: the CLI keeps an ignored signal ignored).
        Skip.If(signal == "INT" && Ignored(2), "SIGINT is ignored by this test process (started in the background by a shell?), so the CLI it starts ignores it too");
        // dropout on, so the RNG state saved at the interruption matters too
        string whole = TestUtil.TempDir(), broken = TestUtil.TempDir();
        string[] run = ["--max-steps", "40", "--save-steps", "8", "--dropout", "0.1"];
        var full = CliRunner.Run(Args(whole, run), TimeSpan.FromMinutes(3));
        Assert.True(full.ExitCode == 0, full.ToString());

        var stopped = CliRunner.RunAndSignal(Args(broken, run), () => MetricsLines(broken) >= 5, signal, TimeSpan.FromMinutes(3));
        Assert.True(stopped.ExitCode == exitCode, stopped.ToString());
        var line = Regex.Match(stopped.Stderr, @"^interrupted at step (\d+); continue with --resume latest$", RegexOptions.Multiline);
        Assert.True(line.Success, stopped.ToString());
        int at = int.Parse(line.Groups[1].Value);
        Assert.InRange(at, 5, 39);
        Assert.True(Directory.Exists(Path.Combine(broken, $"checkpoint-{at}")), stopped.ToString());
        Assert.Equal(at, MetricsLines(broken));
        Assert.False(File.Exists(Path.Combine(broken, "adapter_model.safetensors")));

        var resumed = CliRunner.Run(Args(broken, [.. run, "--resume", "latest"]), TimeSpan.FromMinutes(3));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        AssertSameRun(whole, broken, 40);
    }

    [Fact]
    public void LeftoversOfAKilledRunAreRemovedAtTheNextStartAndTheSaveLimitHolds()
    {
        string dir = TestUtil.TempDir();
        string[] run = ["--max-steps", "4", "--save-steps", "1", "--save-total-limit", "2"];
        Assert.Equal(0, CliRunner.Run(Args(dir, run)).ExitCode);
        Assert.Equal([2, 3], Checkpoints.List(dir).Select(c => c.Step));   // step 4 is the end: the adapter, no checkpoint
        // What kill -9 leaves: a temporary checkpoint of a dead process, a checkpoint renamed for deletion and half
        // deleted, and one checkpoint too many (killed between saving one and deleting the oldest).
        string tmp = Path.Combine(dir, ".tmp-checkpoint-4-999999");
        CopyDirectory(Path.Combine(dir, "checkpoint-3"), tmp);
        string halfDeleted = Path.Combine(dir, ".deleting-checkpoint-1-999999-0");
        CopyDirectory(Path.Combine(dir, "checkpoint-2"), halfDeleted);
        File.Delete(Path.Combine(halfDeleted, "optimizer.safetensors"));
        CopyDirectory(Path.Combine(dir, "checkpoint-2"), Path.Combine(dir, "checkpoint-1"));
        Assert.Equal([1, 2, 3], Checkpoints.List(dir).Select(c => c.Step));

        var r = CliRunner.Run(Args(dir, [.. run, "--resume", "latest"]));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains($"removed {tmp} (left by a process that was killed)", r.Stdout);
        Assert.False(Directory.Exists(tmp));
        Assert.False(Directory.Exists(halfDeleted));
        Assert.Equal([2, 3], Checkpoints.List(dir).Select(c => c.Step));
        Assert.Empty(Directory.GetDirectories(dir, ".*"));
    }

    [SkippableFact]
    public void ADiskFullCheckpointIsRemovedAndTheErrorNamesItAndTheBytes()
    {
        // llama-tiny's adapter (experts 2,4,8, rank 4): 14 experts x 4 x 1,184 (in + out over the seven modules) LoRA weights
        // + 14 x 544 router weights = 73,920 parameters, 12 bytes each with AdamW's moments: 887,040 bytes, and some
        // 970 kB on disk with the headers. 1.2 MB holds one checkpoint, not two.
        using var mount = Tmpfs.Mount("size=1200k");
        string dir = Path.Combine(mount.Path, "run");
        var r = CliRunner.Run(Args(dir, "--max-steps", "4", "--save-steps", "1"));
        string error = r.LastErrorLine();
        Assert.Contains($"{Path.Combine(dir, "checkpoint-2")}: could not write the checkpoint (No space left on device); it needs about 887,040 bytes", error);
        Assert.Empty(Directory.GetDirectories(dir, ".tmp-*"));
        Assert.Equal([1], Checkpoints.List(dir).Select(c => c.Step));   // the earlier checkpoint is whole
        Assert.Equal(5, Directory.GetFiles(Path.Combine(dir, "checkpoint-1")).Length);
    }

    [Fact]
    public void AllocationsThatCannotFitAreRefusedBeforeTheyAreMade()
    {
        var train = CliRunner.Run(Args(TestUtil.TempDir(), "--experts", "square:2147483647", "--top-k", "1"));
        Assert.Matches(@"^training needs about [\d.]+ GiB at its peak, more than the [\d.]+ GiB (available|left).*: try .*fewer --experts or a lower --rank", train.SingleErrorLine());

        var bench = CliRunner.Run("bench", "--quick", "--hidden", "1000000");
        Assert.Matches(@"^the layer benchmark \(--hidden 1000000, .*\) needs [\d.]+ GiB of memory, more than the [\d.]+ GiB (available|left)", bench.SingleErrorLine());

        // 4 x 10^18 tokens x some 10^4 activation bytes each: past a 64-bit integer, where the sum used to wrap negative.
        var plan = CliRunner.Run("params", "--base-model", Llama, "--experts", "2,4,8", "--top-k", "1,2,2", "--micro-batch-size", "2000000000", "--cutoff-len", "2000000000");
        Assert.Contains("the memory plan for micro-batch 2000000000 x 2000000000 tokens passes 2^63", plan.SingleErrorLine());
    }

    [Fact]
    public void TheEmbeddedDefaultsImplicitReplaceKeepsTheOldRunWhenTheNewOneDiverges()
    {
        string cwd = TestUtil.TempDir();
        var first = CliRunner.Run(["train", "--max-steps", "2"], TimeSpan.FromMinutes(4), cwd);
        Assert.True(first.ExitCode == 0, first.ToString());
        string dir = Path.Combine(cwd, "runs", "default");
        var before = Snapshot(dir);
        var diverged = CliRunner.Run(["train", "--max-steps", "4", "--learning-rate", "1e30"], TimeSpan.FromMinutes(4), cwd);
        Assert.Contains("the run it was to replace is restored", diverged.LastErrorLine());
        Assert.Equal(before, Snapshot(dir));
    }

    /// <summary>A directory holding the named files, each containing its own name.</summary>
    static string DirWith(string dir, params string[] files)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in files)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(dir, f))!);
            File.WriteAllText(Path.Combine(dir, f), f);
        }
        return dir;
    }

    static string[] Files(string dir) =>
        [.. Directory.GetFiles(dir, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(dir, f) + "=" + File.ReadAllText(f)).Order()];

    [Fact]
    public void TidyFinishesWhatAKilledOverwriteLeftHalfDone()
    {
        // Killed while moving the old run aside: it goes back.
        string gathering = DirWith(TestUtil.TempDir(), "metrics.jsonl", ".previous-run-gathering/adapter_model.safetensors", ".previous-run-gathering/checkpoint-2/trainer_state.json");
        RunDirectory.Tidy(gathering, resuming: false);
        Assert.Equal(["adapter_model.safetensors=.previous-run-gathering/adapter_model.safetensors", "checkpoint-2/trainer_state.json=.previous-run-gathering/checkpoint-2/trainer_state.json",
            "metrics.jsonl=metrics.jsonl"], Files(gathering));

        // Killed while restoring (the new run's files already gone, part of the old one back): the rest comes back.
        string restoring = DirWith(TestUtil.TempDir(), "adapter_model.safetensors", ".previous-run/.restoring", ".previous-run/metrics.jsonl");
        RunDirectory.Tidy(restoring, resuming: true);
        Assert.Equal(["adapter_model.safetensors=adapter_model.safetensors", "metrics.jsonl=.previous-run/metrics.jsonl"], Files(restoring));

        // Killed after the new run finished, before the old one was deleted: the old one goes.
        string finished = DirWith(TestUtil.TempDir(), "adapter_model.safetensors", "adapter_config.json", ".previous-run/adapter_model.safetensors");
        RunDirectory.Tidy(finished, resuming: false);
        Assert.Equal(["adapter_config.json=adapter_config.json", "adapter_model.safetensors=adapter_model.safetensors"], Files(finished));

        // Killed during the new run: a resume continues it and the old run stays aside; anything else restores the old run.
        string[] unfinished = ["checkpoint-3/trainer_state.json", "metrics.jsonl", ".previous-run/adapter_model.safetensors", ".previous-run/metrics.jsonl"];
        string resumed = DirWith(TestUtil.TempDir(), unfinished);
        RunDirectory.Tidy(resumed, resuming: true);
        Assert.Equal(unfinished.Select(f => f + "=" + f).Order(), Files(resumed));
        string restarted = DirWith(TestUtil.TempDir(), unfinished);
        RunDirectory.Tidy(restarted, resuming: false);
        Assert.Equal(["adapter_model.safetensors=.previous-run/adapter_model.safetensors", "metrics.jsonl=.previous-run/metrics.jsonl"], Files(restarted));
    }

    static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }
}

/// <summary>A small tmpfs mounted for one test (a full or read-only file system); skips the test, with the reason,
/// where mounting is not allowed (not root, or no CAP_SYS_ADMIN in a container).</summary>
sealed class Tmpfs : IDisposable
{
    public string Path { get; }

    Tmpfs(string path) => Path = path;

    public static Tmpfs Mount(string options)
    {
        string dir = TestUtil.TempDir();
        var (code, output) = Exec("mount", "-t", "tmpfs", "-o", options, "tmpfs", dir);
        Skip.If(code != 0, $"cannot mount a tmpfs here (mount exited {code}: {output.Trim()})");
        return new Tmpfs(dir);
    }

    public void Dispose() => Exec("umount", Path);

    static (int Code, string Output) Exec(string file, params string[] args)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true, RedirectStandardOutput = true })!;
            string output = p.StandardError.ReadToEnd() + p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, output);
        }
        catch (System.ComponentModel.Win32Exception e) { return (-1, e.Message); }
    }
}
