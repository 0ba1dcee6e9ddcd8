using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Export;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary><c>mola export</c>: a LoRA merged into a Hugging Face checkpoint gives the logits of the base with the
/// adapter applied unmerged (W x + alpha/r B A x, computed apart); a re-exported base gives its own logits exactly.</summary>
public class ExportTests
{
    static readonly long[] Prompt = [1, 17, 250, 3, 99, 42, 7];

    static Tensor Logits(string baseDir, string? adapterDir = null, bool unmerged = false)
    {
        using var model = ModelLoader.Load(baseDir);
        using var _ = no_grad();
        using var ids = tensor(Prompt).unsqueeze(0);
        if (adapterDir is null) return model.Forward(ids);
        var adapter = unmerged ? AdapterModel.Load(model, adapterDir) : AdapterModel.LoadForInference(model, adapterDir);
        adapter.eval();
        return adapter.Forward(ids).Logits.detach().clone();
    }

    [Fact]
    public void AMergedLoraGivesTheLogitsOfTheUnmergedAdapter()
    {
        string lora = BatchEngineTests.RandomLora(), output = Path.Combine(TestUtil.TempDir(), "merged");
        var result = ModelExport.Run(TestUtil.Fixture("llama-tiny"), lora, output, null, 5_000_000_000, null, overwrite: false);
        Assert.True(result.Merged);
        Assert.Equal(["model.safetensors"], result.Files);
        Assert.True(File.Exists(Path.Combine(output, "tokenizer.model")));
        using var reference = Logits(TestUtil.Fixture("llama-tiny"), lora, unmerged: true);
        using var baseOnly = Logits(TestUtil.Fixture("llama-tiny"));
        using var merged = Logits(output);
        Assert.True(TestUtil.MaxAbsDiff(baseOnly, reference) > 1e-2);   // the adapter changes the logits
        Assert.True(TestUtil.MaxAbsDiff(merged, reference) < 1e-4, $"merged differs by {TestUtil.MaxAbsDiff(merged, reference)}");
        Assert.False(Directory.Exists(output + ".tmp-" + Environment.ProcessId));
    }

    [Fact]
    public void ABinCheckpointReexportsAsSafetensorsShardsWithItsOwnValues()
    {
        string output = Path.Combine(TestUtil.TempDir(), "out");
        var result = ModelExport.Run(TestUtil.Fixture("torch-bin", "llama-tiny-bin"), null, output, null, 200_000, null, overwrite: false);
        Assert.False(result.Merged);
        Assert.True(result.Files.Count >= 3, string.Join(", ", result.Files));
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "model.safetensors.index.json")))!;
        Assert.Equal(result.Bytes - result.Files.Sum(f => 8 + HeaderLength(Path.Combine(output, f))), (long)index["metadata"]!["total_size"]!);
        using var original = Logits(TestUtil.Fixture("llama-tiny"));
        using var exported = Logits(output);
        Assert.True(TestUtil.BitEqual(original, exported));
    }

    static long HeaderLength(string safetensors)
    {
        using var f = File.OpenRead(safetensors);
        var b = new byte[8];
        f.ReadExactly(b);
        return BitConverter.ToInt64(b);
    }

    [Fact]
    public void TheStoredDtypeIsKeptAndNamedInTheConfig()
    {
        string output = Path.Combine(TestUtil.TempDir(), "out");
        var result = ModelExport.Run(TestUtil.Fixture("torch-bin", "llama-tiny-bin1"), null, output, null, 5_000_000_000, null, overwrite: false);
        Assert.Equal("bfloat16", result.DType);
        Assert.Equal("bfloat16", (string)JsonNode.Parse(File.ReadAllText(Path.Combine(output, "config.json")))!["torch_dtype"]!);
        using var f = SafeTensorsFile.Open(Path.Combine(output, "model.safetensors"));
        Assert.All(f.Tensors.Values, t => Assert.Equal("BF16", t.DType));
        using var bin = TorchBinFile.Open(TestUtil.Fixture("torch-bin", "llama-tiny-bin1", "pytorch_model.bin"));
        foreach (var name in bin.Tensors.Keys)
        {
            using var a = bin.Read(name);
            using var b = f.Read(name);
            Assert.True(TestUtil.BitEqual(a, b), name);
        }
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void AMolaAdapterIsRefusedAndNothingIsWritten()
    {
        string output = Path.Combine(TestUtil.TempDir(), "out");
        var run = CliRunner.Run("export", "--base-model", TestUtil.Fixture("llama-tiny"), "--adapter", TestUtil.Fixture("llama-tiny-mola"), "--output", output);
        var message = run.SingleErrorLine();
        Assert.Contains("llama-tiny-mola", message);
        Assert.Contains("MoLA adapter cannot be merged", message);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void AnOriginalMolaAdapterIsRefusedAsMola_NotAskedForTopK()
    {
        string output = Path.Combine(TestUtil.TempDir(), "out");
        string adapter = Path.Combine(TestUtil.Fixture("original-mola"), "adapter");
        var run = CliRunner.Run("export", "--base-model", TestUtil.Fixture("llama-tiny"), "--adapter", adapter, "--output", output);
        var message = run.SingleErrorLine();
        Assert.Contains("MoLA adapter cannot be merged", message);
        Assert.DoesNotContain("top-k", message);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void ANonEmptyOutputIsRefusedUnlessOverwriteAndKeptOnFailure()
    {
        string output = TestUtil.TempDir();
        File.WriteAllText(Path.Combine(output, "keep.txt"), "mine");
        var message = CliRunner.Run("export", "--base-model", TestUtil.Fixture("llama-tiny"), "--output", output).SingleErrorLine();
        Assert.Contains("not empty", message);
        // A failing export (a bad GGUF base: no tokenizer.model) with --overwrite leaves the old output as it was.
        string noTokenizer = TestUtil.CopyFixture("llama-tiny");
        File.Delete(Path.Combine(noTokenizer, "tokenizer.model"));
        message = CliRunner.Run("export", "--base-model", noTokenizer, "--output", output, "--gguf", "--overwrite").SingleErrorLine();
        Assert.Contains("tokenizer.model", message);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(output, "keep.txt")));
        Assert.Equal(0, CliRunner.Run("export", "--base-model", TestUtil.Fixture("llama-tiny"), "--output", output, "--overwrite").ExitCode);
        Assert.False(File.Exists(Path.Combine(output, "keep.txt")));
    }

    [Theory]
    [InlineData("5GB", 5_000_000_000L)]
    [InlineData("500MB", 500_000_000L)]
    [InlineData("2GiB", 2L << 30)]
    [InlineData("1234", 1234L)]
    public void ShardSizesReadAsTransformersWritesThem(string text, long bytes) =>
        Assert.Equal(bytes, Mola.Cli.Commands.ExportCommand.ParseSize(text));

    [Theory]
    [InlineData("0")]
    [InlineData("-5GB")]
    [InlineData("five")]
    public void ABadShardSizeIsRefused(string text) =>
        Assert.Contains("--max-shard-size", Assert.Throws<MolaException>(() => Mola.Cli.Commands.ExportCommand.ParseSize(text)).Message);
}
