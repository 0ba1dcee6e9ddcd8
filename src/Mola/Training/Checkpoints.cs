using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>
/// <c>checkpoint-N/</c> directories: adapter files, optimizer moments, RNG state and the trainer
/// state, written into a temporary directory and renamed into place so that a crash never leaves a
/// half-written checkpoint.
/// </summary>
public static class Checkpoints
{
    public const string Prefix = "checkpoint-";

    public static string Save(string outputDir, TrainerState state, AdapterModel adapter, AdamW optimizer, int keep)
    {
        string final = Path.Combine(outputDir, $"{Prefix}{state.Step}");
        string tmp = Path.Combine(outputDir, $"{TempPrefix}{state.Step}-{Environment.ProcessId}");
        try
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            adapter.Save(tmp);
            optimizer.Save(Path.Combine(tmp, "optimizer.safetensors"));
            using (var rng = random.get_rng_state())
                SafeTensorsFile.Save(Path.Combine(tmp, "rng_state.safetensors"), [new("cpu", rng)]);
            var json = new JsonObject
            {
                ["step"] = state.Step,
                ["epoch"] = state.Epoch,
                ["micro_batch"] = state.MicroBatch,
            };
            File.WriteAllText(Path.Combine(tmp, "trainer_state.json"), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        catch (IOException e)
        {
            // Disk full (or the file system went away): the partial checkpoint goes, the earlier ones stay.
            DeleteQuietly(tmp);
            long parameters = adapter.parameters().Sum(t => t.numel());
            throw new MolaException($"{final}: could not write the checkpoint ({RunLock.Reason(e)}); it needs about {BytesNeeded(parameters):N0} bytes " +
                "(adapter weights and AdamW's two moments, float32); the earlier checkpoints are intact");
        }
        if (Directory.Exists(final)) DeleteAtomically(final);
        Directory.Move(tmp, final);
        Prune(outputDir, keep);
        return final;
    }

    /// <summary>Bytes a checkpoint of an adapter with <paramref name="parameters"/> trainable parameters takes, headers aside.</summary>
    public static long BytesNeeded(long parameters) => checked(3 * 4 * parameters);

    /// <summary>Deletes the oldest checkpoints beyond <paramref name="keep"/> (0 keeps all), never <paramref name="protect"/>.</summary>
    public static void Prune(string outputDir, int keep, string? protect = null)
    {
        if (keep <= 0) return;
        string? kept = protect is null ? null : Path.GetFullPath(protect).TrimEnd('/');
        foreach (var old in List(outputDir).SkipLast(keep).Where(c => Path.GetFullPath(c.Path) != kept))
            DeleteAtomically(old.Path);
    }

    const string TempPrefix = ".tmp-" + Prefix;
    const string DeletingPrefix = ".deleting-";

    /// <summary>Renames a directory to a hidden name, then deletes it: a crash half way leaves a hidden leftover that
    /// <see cref="List"/> never shows and <see cref="RemoveLeftovers"/> removes, never a half-deleted checkpoint.</summary>
    public static void DeleteAtomically(string dir)
    {
        string parent = Path.GetDirectoryName(Path.GetFullPath(dir))!;
        string away = Path.Combine(parent, $"{DeletingPrefix}{Path.GetFileName(dir)}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.Move(dir, away);
        Directory.Delete(away, true);
    }

    /// <summary>Removes what killed processes left in a run directory: temporary checkpoints and directories renamed for
    /// deletion. Call it only while holding the directory's <see cref="RunLock"/> (then no live process is writing them).
    /// Returns the names removed.</summary>
    public static List<string> RemoveLeftovers(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return [];
        var leftovers = Directory.GetDirectories(outputDir, TempPrefix + "*").Concat(Directory.GetDirectories(outputDir, DeletingPrefix + "*")).ToList();
        foreach (var d in leftovers) Directory.Delete(d, true);
        return leftovers.Select(d => Path.GetFileName(d)).ToList();
    }

    static void DeleteQuietly(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
        catch (IOException) { }
    }

    /// <summary>Checkpoint directories of a run, oldest first.</summary>
    public static List<(long Step, string Path)> List(string outputDir) =>
        !Directory.Exists(outputDir) ? []
        : Directory.GetDirectories(outputDir, Prefix + "*")
            .Select(d => (Ok: long.TryParse(System.IO.Path.GetFileName(d)[Prefix.Length..], out long s), Step: s, Path: d))
            .Where(x => x.Ok && File.Exists(System.IO.Path.Combine(x.Path, "trainer_state.json")))
            .OrderBy(x => x.Step)
            .Select(x => (x.Step, x.Path))
            .ToList();

    public static string? Latest(string outputDir) => List(outputDir) is { Count: > 0 } l ? l[^1].Path : null;

    /// <summary>Loads adapter weights, optimizer state and RNG state; returns the trainer state. Everything that must
    /// match for an exact continuation is compared first, so a mismatch changes nothing.</summary>
    /// <param name="runRecord">This run's <c>training_args.json</c>, compared with the checkpoint's run's
    /// (<see cref="RunDescription.CheckResumes"/>); null skips the comparison.</param>
    public static TrainerState Restore(string dir, AdapterModel adapter, AdamW optimizer, string? runRecord = null)
    {
        string statePath = Path.Combine(dir, "trainer_state.json");
        if (!File.Exists(statePath)) throw new MolaException($"{dir}: not a checkpoint (no trainer_state.json)");
        var o = ReadState(statePath);
        if (runRecord is not null && SavedRunRecord(dir, o) is JsonObject saved)
            RunDescription.CheckResumes(dir, saved, JsonNode.Parse(runRecord)!.AsObject());
        adapter.LoadWeights(Path.Combine(dir, AdapterFile.WeightsFile));
        optimizer.Load(Path.Combine(dir, "optimizer.safetensors"));
        using (var f = SafeTensorsFile.Open(Path.Combine(dir, "rng_state.safetensors")))
        using (var rng = f.Read("cpu"))
            random.set_rng_state(rng);
        var state = new TrainerState
        {
            Step = (long)o["step"]!,
            Epoch = (int)o["epoch"]!,
            MicroBatch = (int)o["micro_batch"]!,
        };
        if (optimizer.Steps != state.Step) throw new MolaException($"{dir}: optimizer state is at step {optimizer.Steps} but the trainer state says {state.Step}");
        return state;
    }

    public const string RunRecordFile = "training_args.json";

    /// <summary>The record of the run a checkpoint belongs to: the <c>training_args.json</c> of its run directory (the
    /// run writes it before its first step, so before any checkpoint), or, for a checkpoint written before resumes
    /// compared that, with the settings its trainer_state.json kept under "run" (the same keys); null when neither is there.</summary>
    static JsonObject? SavedRunRecord(string dir, JsonObject state)
    {
        string path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(dir).TrimEnd('/'))!, RunRecordFile);
        var record = File.Exists(path) ? JsonFile.ReadObject(path, "the run record (training_args.json) of the interrupted run") : new JsonObject();
        if (state["run"] is JsonObject legacy)
            foreach (var (key, value) in legacy)
                if (!record.ContainsKey(key)) record[key] = value?.DeepClone();
        return record.Count > 0 ? record : null;
    }

    /// <summary>trainer_state.json with its three counters checked, or an error naming the file.</summary>
    static JsonObject ReadState(string path)
    {
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new MolaException($"{path}: expected a JSON object"); }
        catch (JsonException e) { throw new MolaException($"{path}: invalid JSON ({JsonFile.Short(e)}); the checkpoint is damaged, resume from another"); }
        foreach (var key in new[] { "step", "epoch", "micro_batch" })
        {
            if (o[key] is not JsonValue v || !v.TryGetValue<long>(out long n) || n < 0)
                throw new MolaException($"{path}: \"{key}\" must be a non-negative integer; the checkpoint is damaged, resume from another");
        }
        return o;
    }
}
