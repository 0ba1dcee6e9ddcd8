using System.Runtime.CompilerServices;
using TorchSharp;

namespace Mola.Platform;

/// <summary>The process's native set-up, in one explicit call that the CLI, the tests and the tools make first,
/// before anything touches TorchSharp: libtorch's environment, its CPU threads, and freed native memory kept for
/// reuse (<see cref="GlibcMalloc"/>).</summary>
public static class Native
{
    static bool _initialised;

    public static void Initialise()
    {
        if (_initialised) return;
        _initialised = true;
        NativeEnvironment.Set();   // read once, when libtorch loads: so before the call below loads it
        InitialiseTorch();
    }

    // A method of its own, so that libtorch is not touched (loaded) before the environment above is set.
    [MethodImpl(MethodImplOptions.NoInlining)]
    static void InitialiseTorch()
    {
        // Ranks that mpirun started on this machine share its cores.
        torch.set_num_threads(Math.Max(1, Environment.ProcessorCount / Distributed.DataParallel.LocalRanks));
        GlibcMalloc.KeepFreedMemory();
    }

    /// <summary>Ends the process at once, without the runtime's shutdown (which crashes while libtorch computes on
    /// another thread, and waits on threads stuck inside MPI).</summary>
    public static void ExitNow(int code)
    {
        if (OperatingSystem.IsWindows()) Environment.Exit(code);
        _exit(code);
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "_exit")]
    static extern void _exit(int status);
}
