using System.Text.Json.Nodes;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>
/// <c>.bin</c> checkpoints read by our own unpickler, on files written by Debian's PyTorch 1.13
/// (Fixtures/torch-bin/make_bin_fixtures.py): values against what Python computed, logits against the safetensors
/// copy of the same weights, and files that must be refused.
/// </summary>
public class TorchBinTests
{
    static string Bin(string name) => TestUtil.Fixture("torch-bin", name);

    /// <summary>tensors-zip64.bin is tensors.bin's archive written again by Python's zipfile with the Zip64 records of an
    /// archive over 4 GiB (make_zip64_fixture.py: Zip64 local and central extra fields, 0xFFFFFFFF sizes and offsets,
    /// the Zip64 end record and locator).</summary>
    [Theory]
    [InlineData("tensors.bin")]
    [InlineData("tensors-zip64.bin")]
    public void ValuesDtypesSharedStoragesAndStridedViewsEqualPythons(string file)
    {
        var expected = JsonNode.Parse(File.ReadAllText(Bin("tensors.expected.json")))!.AsObject();
        using var f = TorchBinFile.Open(Bin(file));
        Assert.Equal(expected.Select(kv => kv.Key).Order(), f.Tensors.Keys.Order());
        var dtypes = new Dictionary<string, string>
        {
            ["f32"] = "F32",
            ["bf16"] = "BF16",
            ["f16"] = "F16",
            ["shared.a"] = "F32",
            ["shared.b"] = "F32",
            ["view"] = "F32",
            ["i64"] = "I64",
            ["scalar"] = "F32",
        };
        foreach (var (name, e) in expected)
        {
            Assert.Equal(dtypes[name], f.Tensors[name].DType);
            var shape = e!["shape"]!.AsArray().Select(x => (long)x!).ToArray();
            var values = e["values"]!.AsArray().Select(x => (double)x!).ToArray();
            using var t = f.Read(name);
            Assert.Equal(shape, t.shape);
            using var flat = t.to(ScalarType.Float64).flatten();
            Assert.Equal(values, flat.data<double>().ToArray());   // exact: every stored value is exact in float64
        }
    }

    [Fact]
    public void ATinyLlamaFromShardedBinGivesTheLogitsOfItsSafetensors() =>
        Assert.True(SameLogits(Bin("llama-tiny-bin"), ScalarType.Float32, [1, 17, 250, 3, 99, 42]));

    // Python rounded the float32 weights to bf16 (nearest even); loading the float32 safetensors in bf16 does the same.
    [Fact]
    public void ABf16BinEqualsTheSafetensorsWeightsRoundedToBf16() =>
        Assert.True(SameLogits(Bin("llama-tiny-bin1"), ScalarType.BFloat16, [1, 5, 300, 7]));

    /// <summary>Whether the model in <paramref name="dir"/> gives llama-tiny's logits, bit for bit, loaded in <paramref name="dtype"/>.</summary>
    static bool SameLogits(string dir, ScalarType dtype, long[] prompt)
    {
        using var ids = tensor(prompt).unsqueeze(0);
        using var st = ModelLoader.Load(TestUtil.Fixture("llama-tiny"), dtype);
        using var bin = ModelLoader.Load(dir, dtype);
        using var _ = no_grad();
        using var a = st.Forward(ids);
        using var b = bin.Forward(ids);
        return TestUtil.BitEqual(a, b);
    }

    [Fact]
    public void SafetensorsArePreferredWhenBothArePresent()
    {
        string dir = TestUtil.CopyFixture("llama-tiny");
        File.WriteAllText(Path.Combine(dir, "pytorch_model.bin"), "not read");
        using var model = ModelLoader.Load(dir);
        Assert.Equal(3, model.Config.NumHiddenLayers);
    }

    [Fact]
    public void AMaliciousPickleIsRefusedByTheGlobalItImports()
    {
        var e = Assert.Throws<MolaException>(() => TorchBinFile.Open(Bin("malicious.bin")));
        Assert.Contains(Bin("malicious.bin"), e.Message);
        Assert.Contains("posix.system", e.Message);   // pickle names os.system by its module on Linux
        Assert.Contains("not read", e.Message);
    }

    [Fact]
    public void TheLegacyFormatIsRefusedByName()
    {
        var e = Assert.Throws<MolaException>(() => TorchBinFile.Open(Bin("legacy.bin")));
        Assert.Contains(Bin("legacy.bin"), e.Message);
        Assert.Contains("legacy format", e.Message);
    }

    [Fact]
    public void ATruncatedBinIsAClearError()
    {
        string dir = TestUtil.TempDir(), path = Path.Combine(dir, "pytorch_model.bin");
        var bytes = File.ReadAllBytes(Bin("tensors.bin"));
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<MolaException>(() => TorchBinFile.Open(path));
        Assert.StartsWith(path + ": ", e.Message);
    }

    [Fact]
    public void AZip64ArchiveWithoutItsLocatorIsAClearError()
    {
        string path = Path.Combine(TestUtil.TempDir(), "pytorch_model.bin");
        var bytes = File.ReadAllBytes(Bin("tensors-zip64.bin"));
        int locator = bytes.AsSpan().LastIndexOf("PK\u0006\u0007"u8);
        Assert.True(locator > 0);
        bytes[locator + 2] = 0;
        File.WriteAllBytes(path, bytes);
        Assert.Equal($"{path}: no Zip64 locator (a damaged or truncated torch checkpoint)", Assert.Throws<MolaException>(() => TorchBinFile.Open(path)).Message);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void ThroughTheCliABinModelGenerates()
    {
        var run = CliRunner.Run(["generate", "--base-model", Bin("llama-tiny-bin"), "--prompt", "a", "--max-new-tokens", "3", "--json"]);
        var reference = CliRunner.Run(["generate", "--base-model", TestUtil.Fixture("llama-tiny"), "--prompt", "a", "--max-new-tokens", "3", "--json"]);
        Assert.Equal(0, run.ExitCode);
        Assert.Equal(reference.LastJson().GetProperty("ids").ToString(), run.LastJson().GetProperty("ids").ToString());
    }
}
