using System.Globalization;

namespace Mola.Platform;

/// <summary>How much memory this process can still take, in bytes, and where the figure comes from.</summary>
public sealed record AvailableMemory(long Bytes, string Source)
{
    /// <summary>Overrides what is read from the system (bytes, or with a K, M or G suffix: 6G); for tests and for
    /// machines whose figures mislead.</summary>
    public const string LimitVariable = "MOLA_MEMORY_LIMIT";

    /// <summary><see cref="LimitVariable"/> when set; otherwise on Linux MemAvailable of /proc/meminfo (free memory plus
    /// the page cache the kernel can drop), or the container's (cgroup's) limit less what the container uses when that
    /// is lower; elsewhere what the .NET runtime reports.</summary>
    public static AvailableMemory Read()
    {
        if (Environment.GetEnvironmentVariable(LimitVariable) is { Length: > 0 } limit)
            return new AvailableMemory(ParseBytes(limit), $"allowed by {LimitVariable}");
        if (!OperatingSystem.IsLinux())
            return new AvailableMemory(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, "available");
        var result = new AvailableMemory(ProcFile("/proc/meminfo", "MemAvailable:") is long kb ? kb * 1024 : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes,
            "available (MemAvailable in /proc/meminfo)");
        if (CgroupRoom() is long room && room < result.Bytes)
            result = new AvailableMemory(room, "left under this container's memory limit (cgroup)");
        return result;
    }

    /// <summary>cgroup v2 (memory.max) or v1 (memory.limit_in_bytes): the limit less the usage that cannot be reclaimed
    /// (usage less the inactive page cache); null without a limit.</summary>
    static long? CgroupRoom()
    {
        foreach (var (dir, max, current, cache) in new[]
        {
            ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
        })
        {
            try
            {
                string limitPath = Path.Combine(dir, max);
                if (!File.Exists(limitPath)) continue;
                if (!long.TryParse(File.ReadAllText(limitPath).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long limit)) return null;   // "max"
                if (limit >= long.MaxValue / 2) return null;   // v1 writes a huge number for no limit
                long used = long.Parse(File.ReadAllText(Path.Combine(dir, current)).Trim(), CultureInfo.InvariantCulture);
                long reclaimable = ProcFile(Path.Combine(dir, "memory.stat"), cache + " ") ?? 0;
                return Math.Max(0, limit - Math.Max(0, used - reclaimable));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
            {
                return null;   // unreadable: MemAvailable alone decides
            }
        }
        return null;
    }

    /// <summary>The number after <paramref name="key"/> on its line of a /proc-style file; null when absent.</summary>
    static long? ProcFile(string path, string key)
    {
        if (!File.Exists(path)) return null;
        foreach (var line in File.ReadLines(path))
        {
            if (!line.StartsWith(key, StringComparison.Ordinal)) continue;
            var number = line[key.Length..].Trim().Split(' ')[0];
            return long.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out long v) ? v : null;
        }
        return null;
    }

    static long ParseBytes(string text)
    {
        string t = text.Trim();
        long unit = t.Length > 0 ? char.ToUpperInvariant(t[^1]) switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1 } : 1;
        if (unit > 1) t = t[..^1];
        if (!double.TryParse(t, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double v) || v <= 0 || v * unit >= long.MaxValue)
            throw new MolaException($"{LimitVariable}={text}: expected a positive number of bytes, optionally with K, M or G (e.g. 6G)");
        return (long)(v * unit);
    }
}
