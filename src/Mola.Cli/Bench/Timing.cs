using System.Diagnostics;

namespace Mola.Cli.Bench;

/// <summary>Milliseconds of each repetition of one variant, and their median.</summary>
public sealed record Timings(string Name, IReadOnlyList<double> Milliseconds)
{
    public double Median => Timing.Median(Milliseconds);
}

/// <summary>What a timing counts: elapsed time, or CPU time of this process (user + system, all threads).
/// On a machine shared with other work, CPU time with one thread leaves out the time other processes
/// hold the cores, so it measures the work itself; with several threads it also counts their waiting.</summary>
public enum Clock { Wall, Cpu }

/// <summary>
/// Times variants of one piece of work against each other on a shared, noisy machine: the variants
/// run in rotation (round i starts at variant i), so a burst of load from elsewhere hits them alike,
/// and each is summarised by the median of its repetitions after a warm-up.
/// </summary>
public static class Timing
{
    /// <param name="variants">Each variant's work; it must leave nothing behind that changes the next run.</param>
    /// <param name="warmup">Untimed rounds first (allocator pools, thread pools, lazy initialisation).</param>
    /// <param name="rounds">Timed rounds; every variant runs once per round.</param>
    public static IReadOnlyList<Timings> Interleaved(IReadOnlyList<(string Name, Action Run)> variants, int warmup, int rounds, Clock clock = Clock.Wall)
    {
        for (int w = 0; w < warmup; w++)
            foreach (var (_, run) in variants) run();
        var times = variants.Select(_ => new List<double>()).ToArray();
        for (int round = 0; round < rounds; round++)
        {
            for (int j = 0; j < variants.Count; j++)
            {
                int v = (round + j) % variants.Count;
                times[v].Add(Measure(variants[v].Run, clock));
            }
        }
        return variants.Select((v, i) => new Timings(v.Name, times[i])).ToList();
    }

    /// <summary>Milliseconds one run of <paramref name="run"/> takes on <paramref name="clock"/>.</summary>
    public static double Measure(Action run, Clock clock)
    {
        double before = Now(clock);
        run();
        return Now(clock) - before;
    }

    /// <summary>A reading of <paramref name="clock"/> in milliseconds (differences of readings are what count).</summary>
    public static double Now(Clock clock) => clock == Clock.Wall
        ? Stopwatch.GetTimestamp() * 1000.0 / Stopwatch.Frequency
        : Process.GetCurrentProcess().TotalProcessorTime.TotalMilliseconds;

    public static double Median(IReadOnlyList<double> values)
    {
        if (values.Count == 0) return double.NaN;
        var sorted = values.OrderBy(v => v).ToArray();
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    /// <summary>Median over rounds of <paramref name="a"/>'s time divided by <paramref name="b"/>'s in the same
    /// round: a paired ratio, steadier than a ratio of medians when the load drifts during the run.</summary>
    public static double PairedRatio(Timings a, Timings b) =>
        Median(a.Milliseconds.Zip(b.Milliseconds, (x, y) => x / y).ToList());
}
