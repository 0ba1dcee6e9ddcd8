using System.Diagnostics;
using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Distributed;

/// <summary>
/// This process's place in a data-parallel run started by Open MPI's <c>mpirun</c>: its rank among
/// <see cref="Size"/>, and the collectives the trainer needs (sums of gradients and statistics, a broadcast of
/// the starting adapter). Without mpirun there is none (<see cref="Launched"/> is false) and libmpi is never
/// loaded. Every collective has a deadline: a rank that waits longer than <see cref="Timeout"/> for the others
/// (one has died or hangs) prints an error naming itself and aborts the whole job, so nothing hangs.
/// </summary>
public sealed class DataParallel
{
    /// <summary>Seconds a collective may wait for the other ranks (evaluation and checkpoints on rank 0 fall in it).</summary>
    public const string TimeoutVariable = "MOLA_MPI_TIMEOUT";
    const double DefaultTimeoutSeconds = 300;
    // MPI counts are ints; a 7B adapter's ~106M floats fit, chunks keep any size legal.
    const int ChunkElements = 1 << 28;

    static DataParallel? _current;

    readonly OpenMpi _mpi;
    readonly Timer _watchdog;
    readonly TextWriter _stderr = new StreamWriter(Console.OpenStandardError()) { AutoFlush = true };   // the process's own, whatever Console.Error is
    volatile string _waitingFor = "";

    public int Rank { get; }
    public int Size { get; }
    public bool IsRoot => Rank == 0;
    public TimeSpan Timeout { get; }
    /// <summary>Seconds spent in gradient sums so far, once every rank had arrived (the communication cost).</summary>
    public double GradientSumSeconds { get; private set; }
    /// <summary>Seconds spent waiting for the slowest rank before the gradient sums (uneven shares, a busy machine).</summary>
    public double WaitSeconds { get; private set; }
    /// <summary>Gradient sums so far.</summary>
    public int GradientSums { get; private set; }

    DataParallel(OpenMpi mpi, int rank, int size, TimeSpan timeout)
    {
        _mpi = mpi;
        (Rank, Size, Timeout) = (rank, size, timeout);
        _watchdog = new Timer(_ => Expired());
    }

    /// <summary>Whether mpirun started this process (Open MPI sets OMPI_COMM_WORLD_SIZE in every rank).</summary>
    public static bool Launched => Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is not null;

    /// <summary>Ranks on this machine (1 without mpirun): they share its cores.</summary>
    public static int LocalRanks =>
        int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE"), NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : 1;

    /// <summary>Joins the run mpirun started (once per process); null when this process was not started by mpirun.</summary>
    public static DataParallel? Start()
    {
        if (_current is not null) return _current;
        if (!Launched)
        {
            if (Environment.GetEnvironmentVariable("PMI_RANK") is not null)
                throw new MolaException("PMI_RANK is set but OMPI_COMM_WORLD_SIZE is not: this looks like an MPICH launcher; distributed training runs under Open MPI's mpirun");
            return null;
        }
        var timeout = TimeSpan.FromSeconds(TimeoutSeconds());
        var mpi = new OpenMpi();
        var (rank, size) = mpi.Init();
        return _current = new DataParallel(mpi, rank, size, timeout);
    }

    static double TimeoutSeconds()
    {
        string? s = Environment.GetEnvironmentVariable(TimeoutVariable);
        if (s is null) return DefaultTimeoutSeconds;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v) || v <= 0 || v > int.MaxValue / 1000)
            throw new MolaException($"{TimeoutVariable}={s}: expected a number of seconds above 0");
        return v;
    }

    /// <summary>Whether item <paramref name="index"/> of a step's list (micro-batches, evaluation chunks) is this rank's:
    /// round robin, so every rank's share is known to all and a list shorter than the ranks leaves some idle.</summary>
    public bool Owns(int index) => index % Size == Rank;

    /// <summary>Sums a float32 tensor (the gradients) over the ranks, in place; every rank gets the same sum. A barrier
    /// first, so that the time of the sum itself and the time waiting for the other ranks are told apart.</summary>
    public void Sum(Tensor t, string what)
    {
        var clock = Stopwatch.StartNew();
        Collective(what, _mpi.Barrier);
        WaitSeconds += clock.Elapsed.TotalSeconds;
        clock.Restart();
        OnHost(t, what, (p, n) => { unsafe { _mpi.SumFloats((float*)p, n); } });
        GradientSumSeconds += clock.Elapsed.TotalSeconds;
        GradientSums++;
    }

    /// <summary>One line on the cost so far: the sum's time and the wait per step.</summary>
    public string Summary(long floats) => GradientSums == 0 ? $"data parallel over {Size} ranks" :
        $"data parallel over {Size} ranks: gradient all-reduce of {floats:N0} floats {1000 * GradientSumSeconds / GradientSums:F2} ms a step, " +
        $"waiting for the slowest rank {1000 * WaitSeconds / GradientSums:F1} ms a step";

    /// <summary>Rank 0's values of a float32 tensor, on every rank.</summary>
    public void Broadcast(Tensor t, string what) => OnHost(t, what, (p, n) => { unsafe { _mpi.BroadcastFloats((float*)p, n, 0); } });

    /// <summary>Sums of the ranks' values (in double: exact for token counts).</summary>
    public double[] Sum(double[] values, string what)
    {
        var v = (double[])values.Clone();
        Collective(what, () => { unsafe { fixed (double* p = v) _mpi.SumDoubles(p, v.Length); } });
        return v;
    }

    /// <summary>The largest of the ranks' values, element by element.</summary>
    public double[] Max(double[] values, string what)
    {
        var v = (double[])values.Clone();
        Collective(what, () => { unsafe { fixed (double* p = v) _mpi.MaxDoubles(p, v.Length); } });
        return v;
    }

    /// <summary>Whether any rank says yes (a stop request that arrived at one rank stops all at the same step).</summary>
    public bool Any(bool value, string what) => Max([value ? 1 : 0], what)[0] > 0;

    /// <summary>Runs <paramref name="call"/> on chunks of the tensor's memory; a tensor off the CPU (or not contiguous,
    /// or not float32) goes through a host copy, as MPI without CUDA support needs.</summary>
    void OnHost(Tensor t, string what, Action<IntPtr, int> call)
    {
        bool direct = t.device_type == DeviceType.CPU && t.is_contiguous() && t.dtype == ScalarType.Float32;
        using var host = direct ? null : t.to(ScalarType.Float32, CPU).contiguous();
        var buffer = host ?? t;
        using var storage = buffer.storage<float>();
        IntPtr start = storage.data_ptr() + (nint)(buffer.storage_offset() * sizeof(float));
        long total = buffer.numel();
        Collective(what, () =>
        {
            for (long done = 0; done < total; done += ChunkElements)
                call(start + (nint)(done * sizeof(float)), (int)Math.Min(ChunkElements, total - done));
        });
        if (host is not null)
            using (no_grad()) t.copy_(host);
    }

    void Collective(string what, Action call)
    {
        _waitingFor = what;
        _watchdog.Change(Timeout, System.Threading.Timeout.InfiniteTimeSpan);
        try { call(); }
        finally { _watchdog.Change(System.Threading.Timeout.InfiniteTimeSpan, System.Threading.Timeout.InfiniteTimeSpan); }
    }

    void Expired()
    {
        _stderr.WriteLine($"error: rank {Rank}: {_waitingFor} did not complete within {Timeout.TotalSeconds:0.###} s: another of the {Size} ranks " +
            $"has stopped or hangs; the job is aborted (the last checkpoint is intact; {TimeoutVariable} sets the limit in seconds)");
        // No MPI call from this thread (the main one is inside MPI): mpirun ends the job when a rank exits non-zero.
        Platform.Native.ExitNow(1);
    }

    /// <summary>Ends this rank's part: a rank that finished (or stopped on a signal with the others) leaves MPI
    /// normally; one that failed aborts the job, so no other rank waits for it. A failed rank other than 0 first
    /// gives rank 0 a moment to report an error they share (rank 0 then aborts it), and otherwise prints
    /// <paramref name="error"/> under its own rank.</summary>
    public void Finish(bool succeeded, string? error)
    {
        if (succeeded)
        {
            _mpi.FinalizeMpi();
            return;
        }
        if (!IsRoot)
        {
            Thread.Sleep(TimeSpan.FromSeconds(2));
            if (error is not null) _stderr.WriteLine($"error: rank {Rank}: {error}");
        }
        Abort(1);
    }

    void Abort(int code)
    {
        _mpi.Abort(code);
        Platform.Native.ExitNow(code);   // MPI_Abort returns only if the launcher is gone
    }
}
