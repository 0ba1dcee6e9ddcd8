using System.Runtime.InteropServices;

namespace Mola.Distributed;

/// <summary>
/// The few calls of the MPI C API that data-parallel training needs, bound at run time to Open MPI's
/// <c>libmpi</c>. A P/Invoke layer of our own: the one .NET binding served here (MPI.NET 1.4.0) loads only
/// Microsoft's <c>msmpi</c> and fails on Linux (checked). Open MPI's handles (<c>MPI_COMM_WORLD</c>,
/// <c>MPI_FLOAT</c>, <c>MPI_SUM</c>) are the addresses of exported globals, read from the library itself;
/// MPICH's are integers, so that ABI is not bound. Loaded only when <see cref="DataParallel"/> finds mpirun.
/// </summary>
sealed unsafe class OpenMpi
{
    const int Success = 0;
    // MPI_THREAD_SERIALIZED, not MULTIPLE: measured here, MULTIPLE's locking made a 416,640-float all-reduce 2-6x
    // slower (bench/NOTES.md); the watchdog makes no MPI call.
    const int ThreadSerialized = 2;
    static readonly IntPtr InPlace = 1;   // Open MPI's MPI_IN_PLACE

    readonly delegate* unmanaged<int*, int> _initialized;
    readonly delegate* unmanaged<int*, byte***, int, int*, int> _initThread;
    readonly delegate* unmanaged<IntPtr, int*, int> _commRank, _commSize;
    readonly delegate* unmanaged<IntPtr, IntPtr, int, IntPtr, IntPtr, IntPtr, int> _allreduce;
    readonly delegate* unmanaged<IntPtr, int, IntPtr, int, IntPtr, int> _bcast;
    readonly delegate* unmanaged<IntPtr, int> _barrier;
    readonly delegate* unmanaged<int> _finalize;
    readonly delegate* unmanaged<IntPtr, int, int> _abort;
    readonly IntPtr _world, _float, _double, _sum, _max;

    public OpenMpi()
    {
        var lib = Load();
        IntPtr F(string name) => NativeLibrary.GetExport(lib, name);
        _initialized = (delegate* unmanaged<int*, int>)F("MPI_Initialized");
        _initThread = (delegate* unmanaged<int*, byte***, int, int*, int>)F("MPI_Init_thread");
        _commRank = (delegate* unmanaged<IntPtr, int*, int>)F("MPI_Comm_rank");
        _commSize = (delegate* unmanaged<IntPtr, int*, int>)F("MPI_Comm_size");
        _allreduce = (delegate* unmanaged<IntPtr, IntPtr, int, IntPtr, IntPtr, IntPtr, int>)F("MPI_Allreduce");
        _bcast = (delegate* unmanaged<IntPtr, int, IntPtr, int, IntPtr, int>)F("MPI_Bcast");
        _barrier = (delegate* unmanaged<IntPtr, int>)F("MPI_Barrier");
        _finalize = (delegate* unmanaged<int>)F("MPI_Finalize");
        _abort = (delegate* unmanaged<IntPtr, int, int>)F("MPI_Abort");
        _world = F("ompi_mpi_comm_world");
        _float = F("ompi_mpi_float");
        _double = F("ompi_mpi_double");
        _sum = F("ompi_mpi_op_sum");
        _max = F("ompi_mpi_op_max");
    }

    // RTLD_GLOBAL, as mpi4py does: Open MPI's plugins (dlopen'ed by libmpi) resolve its symbols globally.
    static IntPtr Load()
    {
        const int RtldNow = 2, RtldGlobal = 0x100;
        foreach (var name in new[] { "libmpi.so.40", "libmpi.so" })
        {
            var h = DlOpen(name, RtldNow | RtldGlobal);
            if (h != IntPtr.Zero) return h;
        }
        throw new MolaException("mpirun started this process but Open MPI's libmpi.so.40 could not be loaded: install it (apt-get install -y openmpi-bin libopenmpi-dev)");
    }

    [DllImport("libc", EntryPoint = "dlopen")]
    static extern IntPtr DlOpen(string file, int mode);

    public (int Rank, int Size) Init()
    {
        int flag, provided, rank, size;
        Check(_initialized(&flag), "MPI_Initialized");
        if (flag == 0) Check(_initThread(null, null, ThreadSerialized, &provided), "MPI_Init_thread");
        Check(_commRank(_world, &rank), "MPI_Comm_rank");
        Check(_commSize(_world, &size), "MPI_Comm_size");
        return (rank, size);
    }

    public void SumFloats(float* data, int count) => Check(_allreduce(InPlace, (IntPtr)data, count, _float, _sum, _world), "MPI_Allreduce");
    public void SumDoubles(double* data, int count) => Check(_allreduce(InPlace, (IntPtr)data, count, _double, _sum, _world), "MPI_Allreduce");
    public void MaxDoubles(double* data, int count) => Check(_allreduce(InPlace, (IntPtr)data, count, _double, _max, _world), "MPI_Allreduce");
    public void BroadcastFloats(float* data, int count, int root) => Check(_bcast((IntPtr)data, count, _float, root, _world), "MPI_Bcast");
    public void Barrier() => Check(_barrier(_world), "MPI_Barrier");
    public void FinalizeMpi() => Check(_finalize(), "MPI_Finalize");
    public void Abort(int code) => _abort(_world, code);

    // Open MPI's default error handler aborts the job on a communication error; a code returned here is a misuse.
    static void Check(int code, string call)
    {
        if (code != Success) throw new MolaException($"{call} failed with MPI error code {code}");
    }
}
