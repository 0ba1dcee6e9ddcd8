namespace Mola.Training;

/// <summary>
/// One writer per run directory: an exclusive lock on <c>DIR/.mola.lock</c>, held until disposed. .NET on Linux and
/// macOS backs <see cref="FileShare.None"/> with <c>flock(LOCK_EX | LOCK_NB)</c>, which the kernel drops when the
/// process dies, so a killed run (even kill -9) leaves no stale lock; the empty lock file itself stays. Any command
/// that writes into a run directory takes it before touching anything there.
/// </summary>
public sealed class RunLock : IDisposable
{
    public const string FileName = ".mola.lock";

    readonly FileStream _stream;

    /// <summary>The locked directory.</summary>
    public string Directory { get; }

    /// <summary>Whether <see cref="Acquire"/> created the directory (so a run that fails before writing anything can remove it again).</summary>
    public bool CreatedDirectory { get; }

    RunLock(FileStream stream, string directory, bool created)
    {
        _stream = stream;
        Directory = directory;
        CreatedDirectory = created;
    }

    /// <summary>Creates <paramref name="directory"/> if needed and locks it, or fails at once with an error naming it:
    /// another process holds it, or it cannot be created or written (a file in the way, no permission, a read-only file system).</summary>
    /// <param name="what">How the error names the directory, e.g. <c>--output runs/a</c>.</param>
    public static RunLock Acquire(string directory, string? what = null)
    {
        what ??= directory;
        bool created = !System.IO.Directory.Exists(directory);
        string path = Path.Combine(directory, FileName);
        try
        {
            System.IO.Directory.CreateDirectory(directory);
            // A lock holder that removed an empty directory it had made (see RemoveIfEmpty) leaves our handle on a
            // deleted file: then open the new one.
            for (int attempt = 0; ; attempt++)
            {
                var stream = Open(path, what);
                if (File.Exists(path) || attempt == 2) return new RunLock(stream, directory, created);
                stream.Dispose();
                System.IO.Directory.CreateDirectory(directory);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException && e is not MolaException)
        {
            string? blocking = FileInTheWay(directory);
            throw new MolaException(blocking is not null ? $"{what}: cannot be created: {blocking} is a file, not a directory"
                : $"{what}: cannot be created or written ({Reason(e)})");
        }
    }

    /// <summary>The nearest existing ancestor of <paramref name="directory"/> when it is a file (then nothing under it can be made).</summary>
    static string? FileInTheWay(string directory)
    {
        for (string? d = Path.GetFullPath(directory); d is not null; d = Path.GetDirectoryName(d))
        {
            if (File.Exists(d)) return d;
            if (System.IO.Directory.Exists(d)) return null;
        }
        return null;
    }

    static FileStream Open(string path, string what)
    {
        try
        {
            return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e) when (File.Exists(path) && IsSharingViolation(e))
        {
            throw new MolaException($"{what}: another mola process is writing this run directory (it holds {path}); " +
                "wait for it to finish, stop it, or use another output directory");
        }
    }

    // .NET reports a lock held elsewhere as a sharing violation (Windows' ERROR_SHARING_VIOLATION, 32, in the HResult).
    static bool IsSharingViolation(IOException e) => (e.HResult & 0xFFFF) == 32 || e.Message.Contains("being used by another process", StringComparison.Ordinal);

    /// <summary>The system's reason without the path .NET appends (the caller names the path).</summary>
    public static string Reason(Exception e)
    {
        if (e is UnauthorizedAccessException) return "permission denied";
        int at = e.Message.IndexOf(" : '", StringComparison.Ordinal);
        return (at > 0 ? e.Message[..at] : e.Message).TrimEnd('.', ' ');
    }

    /// <summary>Removes the directory if this lock created it and nothing but the lock file is in it (a run that
    /// failed before writing anything leaves no empty directory behind).</summary>
    public void RemoveIfEmpty()
    {
        if (!CreatedDirectory) return;
        try
        {
            if (System.IO.Directory.EnumerateFileSystemEntries(Directory).Any(e => Path.GetFileName(e) != FileName)) return;
            File.Delete(Path.Combine(Directory, FileName));
            System.IO.Directory.Delete(Directory);
        }
        catch (IOException) { }   // best effort: something else appeared in it
    }

    public void Dispose() => _stream.Dispose();
}
