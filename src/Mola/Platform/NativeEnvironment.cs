using System.Runtime.InteropServices;

namespace Mola.Platform;

/// <summary>
/// Settings libtorch's OpenMP runtime reads once, when it is loaded: they must be in the native
/// environment before the first TorchSharp call (<see cref="Native.Initialise"/> sets them first).
/// </summary>
static class NativeEnvironment
{
    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    // OpenMP threads spin while waiting by default. When the cores are shared (parallel tests, a
    // second process, a busy machine) a spinning team stalls at every barrier: measured here, 20
    // training steps of the llama-tiny fixture took 7.3 s with spinning and 1.3 s with PASSIVE on a
    // loaded 2-core machine. PASSIVE costs nothing measurable when the machine is idle. A value the
    // user set is kept (overwrite = 0).
    public static void Set()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        try
        {
            SetEnv("OMP_WAIT_POLICY", "PASSIVE", 0);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // No libc to call: libtorch keeps its defaults.
        }
    }
}
