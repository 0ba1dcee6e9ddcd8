using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>Where a run stands: optimizer steps done, and the data position (epoch, next micro-batch).</summary>
public sealed class TrainerState
{
    public long Step { get; set; }
    public int Epoch { get; set; }
    public int MicroBatch { get; set; }
}

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
        string tmp = Path.Combine(outputDir, $".tmp-{Prefix}{state.Step}-{Environment.ProcessId}");
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
        if (Directory.Exists(final)) Directory.Delete(final, true);
        Directory.Move(tmp, final);
        Prune(outputDir, keep);
        return final;
    }

    static void Prune(string outputDir, int keep)
    {
        if (keep <= 0) return;
        foreach (var old in List(outputDir).SkipLast(keep)) Directory.Delete(old.Path, true);
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

    /// <summary>Loads adapter weights, optimizer state and RNG state; returns the trainer state.</summary>
    public static TrainerState Restore(string dir, AdapterModel adapter, AdamW optimizer)
    {
        string statePath = Path.Combine(dir, "trainer_state.json");
        if (!File.Exists(statePath)) throw new MolaException($"{dir}: not a checkpoint (no trainer_state.json)");
        var saved = AdapterConfig.Load(dir);
        if (!saved.NumExperts.SequenceEqual(adapter.Config.NumExperts) || !saved.Rank.SequenceEqual(adapter.Config.Rank) || !saved.TargetModules.SequenceEqual(adapter.Config.TargetModules))
            throw new MolaException($"{dir}: the checkpoint's adapter (experts, rank or targets) differs from this run's");
        adapter.LoadWeights(Path.Combine(dir, AdapterModel.WeightsFile));
        optimizer.Load(Path.Combine(dir, "optimizer.safetensors"));
        using (var f = SafeTensorsFile.Open(Path.Combine(dir, "rng_state.safetensors")))
        using (var rng = f.Read("cpu"))
            random.set_rng_state(rng);
        var o = JsonNode.Parse(File.ReadAllText(statePath))!.AsObject();
        var state = new TrainerState
        {
            Step = o["step"]!.GetValue<long>(),
            Epoch = o["epoch"]!.GetValue<int>(),
            MicroBatch = o["micro_batch"]!.GetValue<int>(),
        };
        if (optimizer.Steps != state.Step) throw new MolaException($"{dir}: optimizer state is at step {optimizer.Steps} but the trainer state says {state.Step}");
        return state;
    }
}
