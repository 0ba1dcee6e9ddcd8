using System.Runtime.InteropServices;

namespace Mola.Platform;

/// <summary>
/// glibc's malloc hands large freed blocks back to the kernel (unmapping them, trimming the heap), so the
/// next tensor of that size faults every page in again and the kernel zeroes each one. A training step
/// allocates and frees the same sizes over and over: on a 2-core machine these faults cost more than the
/// whole MoLA adapter's arithmetic (bench/NOTES.md). Keeping freed blocks in the process for reuse removes
/// them; the process then holds on to its peak memory, which a training run reaches every step anyway.
/// </summary>
static class GlibcMalloc
{
    const int TrimThreshold = -1;   // M_TRIM_THRESHOLD
    const int MmapThreshold = -3;   // M_MMAP_THRESHOLD

    /// <summary>Blocks under 32 MiB (glibc's largest allowed threshold) come from the heap and stay there once
    /// freed; the heap is never trimmed. False where there is no glibc (Windows, macOS, musl).</summary>
    public static bool KeepFreedMemory()
    {
        if (!OperatingSystem.IsLinux()) return false;
        try
        {
            return Mallopt(MmapThreshold, 32 << 20) == 1 && Mallopt(TrimThreshold, int.MaxValue) == 1;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int Mallopt(int param, int value);
}
