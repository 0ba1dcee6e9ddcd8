using Mola.Adapters;

namespace Mola.Training;

/// <summary>
/// A training run's files in its output directory, and how a replaced run is kept safe. <see cref="MoveAside"/> moves
/// the previous run into <c>.previous-run/</c> beside the new one; <see cref="Commit"/> deletes it once the new run has
/// proven itself (it finished and saved its adapter); <see cref="Restore"/> brings it back when the new run fails.
/// A process killed in between leaves <c>.previous-run/</c>, which <see cref="Tidy"/> sorts out at the next start.
/// Every method expects the directory's <see cref="RunLock"/> to be held.
/// </summary>
public static class RunDirectory
{
    /// <summary>The files a run writes at the top of its directory (its checkpoints are the <c>checkpoint-N/</c> directories).</summary>
    public static readonly string[] RunFiles = [AdapterFile.ConfigFile, AdapterFile.WeightsFile, "metrics.jsonl", "training_args.json", "eval.jsonl"];

    public const string PreviousRun = ".previous-run";
    // Where MoveAside gathers the run before the one rename that makes it the previous run.
    const string Gathering = ".previous-run-gathering";
    // Inside PreviousRun while Restore moves it back: the new run's files are gone, only the moving back is left.
    const string RestoringMarker = ".restoring";

    /// <summary>Names of the run's files and checkpoint directories in <paramref name="dir"/>.</summary>
    public static List<string> Entries(string dir) =>
        !Directory.Exists(dir) ? []
        : RunFiles.Where(f => File.Exists(Path.Combine(dir, f)))
            .Concat(Directory.GetDirectories(dir, Checkpoints.Prefix + "*").Select(d => Path.GetFileName(d)))
            .ToList();

    /// <summary>Whether the run in <paramref name="dir"/> finished: its final adapter is there.</summary>
    public static bool Finished(string dir) =>
        File.Exists(Path.Combine(dir, AdapterFile.WeightsFile)) && File.Exists(Path.Combine(dir, AdapterFile.ConfigFile));

    /// <summary>Moves the run in <paramref name="dir"/> (if any) into <c>.previous-run/</c>. Returns whether there was one.</summary>
    public static bool MoveAside(string dir)
    {
        var entries = Entries(dir);
        if (entries.Count == 0) return false;
        string gathering = Path.Combine(dir, Gathering);
        Directory.CreateDirectory(gathering);
        foreach (var e in entries) Move(Path.Combine(dir, e), Path.Combine(gathering, e));
        Directory.Move(gathering, Path.Combine(dir, PreviousRun));
        return true;
    }

    /// <summary>The new run proved itself: the previous one goes.</summary>
    public static void Commit(string dir)
    {
        string previous = Path.Combine(dir, PreviousRun);
        if (Directory.Exists(previous)) Checkpoints.DeleteAtomically(previous);
    }

    /// <summary>Deletes the unfinished run in <paramref name="dir"/> and moves the previous run back. Safe to repeat
    /// after a crash at any point (<see cref="Tidy"/> does).</summary>
    public static void Restore(string dir)
    {
        string previous = Path.Combine(dir, PreviousRun);
        if (!Directory.Exists(previous)) return;
        string marker = Path.Combine(previous, RestoringMarker);
        if (!File.Exists(marker))
        {
            foreach (var e in Entries(dir)) Delete(Path.Combine(dir, e));
            File.WriteAllText(marker, "");
        }
        foreach (var e in Entries(previous)) Move(Path.Combine(previous, e), Path.Combine(dir, e));
        Directory.Delete(previous, true);
    }

    /// <summary>
    /// Sorts out what a killed process left, before a run starts in <paramref name="dir"/>: temporary and half-deleted
    /// checkpoints go; a run being moved aside goes back; a previous run whose replacement finished goes; one whose
    /// replacement did not finish comes back, unless this run resumes the replacement (which then owns it until it
    /// finishes). Returns one line per thing done, for the log.
    /// </summary>
    /// <param name="settingName">How the lines name a setting (<see cref="TrainingRecipe.SettingName"/>).</param>
    public static List<string> Tidy(string dir, bool resuming, Func<string, string>? settingName = null)
    {
        string overwrite = (settingName ?? (key => key))("overwrite");
        var done = Checkpoints.RemoveLeftovers(dir).Select(d => $"removed {Path.Combine(dir, d)} (left by a process that was killed)").ToList();
        string gathering = Path.Combine(dir, Gathering), previous = Path.Combine(dir, PreviousRun);
        if (Directory.Exists(gathering))
        {
            foreach (var e in Entries(gathering)) Move(Path.Combine(gathering, e), Path.Combine(dir, e));
            Directory.Delete(gathering, true);
            done.Add($"{dir}: put back the run an {overwrite} was moving aside when it was killed");
        }
        if (!Directory.Exists(previous)) return done;
        if (File.Exists(Path.Combine(previous, RestoringMarker)) || (!Finished(dir) && !resuming))
        {
            Restore(dir);
            done.Add($"{dir}: restored the run that an unfinished {overwrite} had replaced (the unfinished run is discarded)");
        }
        else if (Finished(dir))
        {
            Commit(dir);
            done.Add($"{dir}: removed the run that a finished {overwrite} replaced");
        }
        return done;
    }

    /// <summary>Writes (or appends to) a file of the run; a full disk or a file system gone read-only is an error naming it.</summary>
    public static void WriteFile(string path, string text, bool append = false)
    {
        try
        {
            if (append) File.AppendAllText(path, text);
            else File.WriteAllText(path, text);
        }
        catch (IOException e) { throw new MolaException($"{path}: could not write ({RunLock.Reason(e)})"); }
    }

    static void Move(string from, string to)
    {
        if (Directory.Exists(from)) Directory.Move(from, to);
        else File.Move(from, to);
    }

    static void Delete(string path)
    {
        if (Directory.Exists(path)) Checkpoints.DeleteAtomically(path);
        else File.Delete(path);
    }
}
