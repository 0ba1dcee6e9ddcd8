using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Tests;

static class TestUtil
{
    public static string Fixture(params string[] parts) => Path.Combine([AppContext.BaseDirectory, "Fixtures", .. parts]);

    /// <summary>The repository's examples/ folder (the tests run from bin/...; it lies next to Mola.sln).</summary>
    public static string ExamplesDir()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Mola.sln"))) return Path.Combine(dir.FullName, "examples");
        throw new InvalidOperationException("repository root (Mola.sln) not found above " + AppContext.BaseDirectory);
    }

    public static Dictionary<string, Tensor> ReadAll(string path)
    {
        using var f = SafeTensorsFile.Open(path);
        return f.Tensors.Keys.ToDictionary(k => k, k => f.Read(k));
    }

    public static double MaxAbsDiff(Tensor a, Tensor b)
    {
        using var d = (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max();
        return d.item<double>();
    }

    /// <summary>Same shape, dtype and bits.</summary>
    public static bool BitEqual(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && BytesOf(a).SequenceEqual(BytesOf(b));

    static byte[] BytesOf(Tensor t)
    {
        using var c = t.detach().cpu().contiguous();
        return c.bytes.ToArray();
    }

    public static double RelDiff(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        var a64 = a.to(ScalarType.Float64);
        var b64 = b.to(ScalarType.Float64);
        return ((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-30)).item<double>();
    }

    public static string TempDir()
    {
        string d = Path.Combine(Path.GetTempPath(), "mola-tests-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>Copies a fixture directory into a fresh temporary one (for tests that break files).</summary>
    public static string CopyFixture(string name)
    {
        string dst = TempDir();
        foreach (var f in Directory.GetFiles(Fixture(name)))
            File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        return dst;
    }
}
