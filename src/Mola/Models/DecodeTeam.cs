using System.Diagnostics;

namespace Mola.Models;

/// <summary>
/// Threads that share out the chunks of one product with the calling thread, for batch-1 decoding
/// (<see cref="Bf16Gemv"/>). A decoded token is ~155 products a few tens of microseconds apart, and a pool thread
/// that went to sleep between two of them wakes too late to take part (measured, bench/NOTES.md: with the .NET pool
/// the caller computed ~90% of the chunks). These threads spin for <see cref="SpinMicroseconds"/> after each
/// product, yielding the core to any other runnable thread, and only then sleep, so inside a token they are awake
/// when the next product comes, and outside decoding they cost nothing. Chunks are taken in turn from a counter, so
/// the caller never waits for a thread that has not started: it takes what is left, and waits only for chunks
/// already being computed (a busy machine degrades to one thread's rate instead of stalling).
/// </summary>
static class DecodeTeam
{
    /// <summary>How long a helper thread stays awake after a product: longer than the gaps inside a token (attention,
    /// norms, sampling: tens to a few hundred microseconds), short beside a token.</summary>
    const long SpinMicroseconds = 2000;

    sealed class Job(int chunks, int helpers, Action<int> chunk)
    {
        public readonly int Chunks = chunks, Helpers = helpers;
        readonly Action<int> _chunk = chunk;
        int _next = -1, _done;

        public bool Finished => Volatile.Read(ref _done) == Chunks;

        public void Work()
        {
            for (int c; (c = Interlocked.Increment(ref _next)) < Chunks;)
            {
                _chunk(c);
                Interlocked.Increment(ref _done);
            }
        }
    }

    static readonly object Gate = new();
    static readonly List<Thread> Threads = [];
    static Job? _current;
    static int _sleepers;

    /// <summary>Runs <paramref name="chunk"/> for 0 .. <paramref name="chunks"/> - 1 on up to <paramref name="threads"/>
    /// threads (the caller one of them); returns when every chunk is done. Callers on several threads at once are safe
    /// (a caller always finishes its own job; the helpers follow the newest), just not faster.</summary>
    public static void Run(int chunks, int threads, Action<int> chunk)
    {
        int helpers = Math.Min(threads, chunks) - 1;
        if (helpers <= 0)
        {
            for (int c = 0; c < chunks; c++) chunk(c);
            return;
        }
        var job = new Job(chunks, helpers, chunk);
        lock (Gate)
        {
            while (Threads.Count < helpers) Start(Threads.Count);
        }
        Interlocked.Exchange(ref _current, job);   // a full fence: a helper going to sleep sees the job or is woken
        if (Volatile.Read(ref _sleepers) > 0)
            lock (Gate) Monitor.PulseAll(Gate);
        job.Work();
        var spin = new SpinWait();
        while (!job.Finished) spin.SpinOnce(sleep1Threshold: -1);   // only chunks a helper is computing now
    }

    static void Start(int index)
    {
        var thread = new Thread(() => Loop(index)) { IsBackground = true, Name = $"mola-decode-{index + 1}" };
        Threads.Add(thread);
        thread.Start();
    }

    static void Loop(int index)
    {
        Job? last = null;
        while (true)
        {
            var job = Next(last);
            last = job;
            if (index < job.Helpers) job.Work();
        }
    }

    /// <summary>The next job after <paramref name="last"/>: spinning (with yields) for a while, then asleep.</summary>
    static Job Next(Job? last)
    {
        long until = Stopwatch.GetTimestamp() + SpinMicroseconds * Stopwatch.Frequency / 1_000_000;
        for (int i = 0; ; i++)
        {
            var job = Volatile.Read(ref _current);
            if (job is not null && job != last) return job;
            if (i % 64 == 63)
            {
                if (Stopwatch.GetTimestamp() > until) break;
                Thread.Yield();
            }
            else Thread.SpinWait(8);
        }
        lock (Gate)
        {
            Interlocked.Increment(ref _sleepers);
            try
            {
                while (true)
                {
                    var job = Volatile.Read(ref _current);
                    if (job is not null && job != last) return job;
                    Monitor.Wait(Gate);
                }
            }
            finally
            {
                Interlocked.Decrement(ref _sleepers);
            }
        }
    }
}
