// MSBuild inline task (RoslynCodeTaskFactory): marks GLIBCXX version requirements that the system
// libstdc++ lacks as weak in a copy of libLibTorchSharp.so in the build output.
// Why: TorchSharp 0.107.0's native shim was linked with GCC 13 and asks for GLIBCXX_3.4.32 only
// for `std::ios_base_library_init()`, a link-time marker with no relocation against it; Debian 12
// (GCC 12) stops at 3.4.30 and the loader refuses the library. VER_FLG_WEAK lets it load.
// See README.md, "Building on Debian 12". Never touches the NuGet cache: only files under the output dir.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class WeakenGlibcxxVersion : Task
{
    [Required] public ITaskItem[] Libraries { get; set; } = Array.Empty<ITaskItem>();
    // Versions known to be link-time markers only; anything else missing is reported, not patched.
    public string Versions { get; set; } = "GLIBCXX_3.4.32";

    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 2;

    public override bool Execute()
    {
        string systemLib = FindSystemLibstdcxx();
        foreach (var item in Libraries)
        {
            string path = item.ItemSpec;
            if (!File.Exists(path)) continue;
            try { PatchOne(path, systemLib); }
            catch (Exception e) { Log.LogWarning("mola: could not inspect {0}: {1}", path, e.Message); }
        }
        return !Log.HasLoggedErrors;
    }

    void PatchOne(string path, string systemLib)
    {
        byte[] elf = File.ReadAllBytes(path);
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F' || elf[4] != 2 || elf[5] != 1)
            return; // not a 64-bit little-endian ELF: nothing to do on this platform
        long shoff = (long)BitConverter.ToUInt64(elf, 0x28);
        int shentsize = BitConverter.ToUInt16(elf, 0x3A);
        int shnum = BitConverter.ToUInt16(elf, 0x3C);
        var patched = new StringBuilder();
        var missing = new StringBuilder();
        for (int s = 0; s < shnum; s++)
        {
            long sh = shoff + (long)s * shentsize;
            if (BitConverter.ToUInt32(elf, (int)sh + 4) != ShtGnuVerneed) continue;
            long secOff = (long)BitConverter.ToUInt64(elf, (int)sh + 0x18);
            int link = (int)BitConverter.ToUInt32(elf, (int)sh + 0x28);
            int count = (int)BitConverter.ToUInt32(elf, (int)sh + 0x2C);
            long strOff = (long)BitConverter.ToUInt64(elf, (int)(shoff + (long)link * shentsize) + 0x18);
            long vn = secOff;
            for (int i = 0; i < count; i++)
            {
                int cnt = BitConverter.ToUInt16(elf, (int)vn + 2);
                string file = CString(elf, strOff + BitConverter.ToUInt32(elf, (int)vn + 4));
                long aux = vn + BitConverter.ToUInt32(elf, (int)vn + 8);
                for (int a = 0; a < cnt; a++)
                {
                    string name = CString(elf, strOff + BitConverter.ToUInt32(elf, (int)aux + 8));
                    int flagsAt = (int)aux + 4;
                    ushort flags = BitConverter.ToUInt16(elf, flagsAt);
                    if (file.StartsWith("libstdc++.so", StringComparison.Ordinal) && name.StartsWith("GLIBCXX_", StringComparison.Ordinal)
                        && !Provides(systemLib, name))
                    {
                        if (Array.IndexOf(Versions.Split(';', ','), name) >= 0)
                        {
                            if ((flags & VerFlgWeak) == 0)
                            {
                                flags |= VerFlgWeak;
                                elf[flagsAt] = (byte)(flags & 0xff);
                                elf[flagsAt + 1] = (byte)(flags >> 8);
                                patched.Append(name).Append(' ');
                            }
                        }
                        else missing.Append(name).Append(' ');
                    }
                    aux += BitConverter.ToUInt32(elf, (int)aux + 12);
                }
                vn += BitConverter.ToUInt32(elf, (int)vn + 12);
            }
        }
        if (missing.Length > 0)
            Log.LogWarning("mola: {0} needs {1}which the system libstdc++ ({2}) lacks; it may not load", path, missing, systemLib);
        if (patched.Length == 0) return;
        string tmp = path + ".tmp";
        File.WriteAllBytes(tmp, elf);
        File.Delete(path);
        File.Move(tmp, path);
        Log.LogMessage(MessageImportance.High, "mola: marked {0}weak in {1} (system libstdc++ lacks it; see README.md, \"Building on Debian 12\")", patched, path);
    }

    static string CString(byte[] b, long at)
    {
        int end = (int)at;
        while (b[end] != 0) end++;
        return Encoding.ASCII.GetString(b, (int)at, end - (int)at);
    }

    static readonly System.Collections.Generic.Dictionary<string, string> Cache = new();

    static bool Provides(string systemLib, string version)
    {
        if (systemLib.Length == 0) return true; // no system libstdc++ found: leave the library alone
        if (!Cache.TryGetValue(systemLib, out var text))
        {
            text = Encoding.ASCII.GetString(File.ReadAllBytes(systemLib));
            Cache[systemLib] = text;
        }
        return text.Contains(version + "\0");
    }

    static string FindSystemLibstdcxx()
    {
        foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/lib64" })
        {
            string p = Path.Combine(dir, "libstdc++.so.6");
            if (File.Exists(p)) return Path.GetFullPath(p);
        }
        return "";
    }
}
