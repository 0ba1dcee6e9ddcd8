using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>Base weights stored in the dtype they are loaded in use the checkpoint file's pages (no copy).</summary>
public class MappedLoadTests
{
    const string Norm = "model.norm.weight";

    /// <summary>Overwrites tensor <paramref name="name"/>'s stored float32 values in place in its file.</summary>
    static void OverwriteInFile(string dir, string name, float value)
    {
        using var ckpt = Checkpoint.Open(dir);
        var info = ckpt.Info(name);
        string file = ckpt.FileOf(name);
        long dataStart;
        using (var fs = File.OpenRead(file))
        {
            var len = new byte[8];
            fs.ReadExactly(len);
            dataStart = 8 + BitConverter.ToInt64(len);
        }
        Assert.Equal("F32", info.DType);
        using var w = new FileStream(file, FileMode.Open, FileAccess.Write);
        w.Position = dataStart + info.Begin;
        for (long i = 0; i < info.NumElements; i++) w.Write(BitConverter.GetBytes(value));
    }

    static Tensor Parameter(CausalLM model, string name) => model.named_parameters().Single(p => p.name == name).parameter;

    [Fact]
    public void AWeightLoadedInItsStoredDtypeIsTheFilesPages()
    {
        string dir = TestUtil.CopyFixture("llama-tiny");   // float32 shards
        using var model = ModelLoader.Load(dir);
        var norm = Parameter(model, Norm);
        Assert.NotEqual(7f, norm[0].item<float>());
        // A write to the file after loading shows in the parameter: they are the same pages, not a copy.
        OverwriteInFile(dir, Norm, 7f);
        Assert.True(norm.eq(7f).all().item<bool>());
    }

    [Fact]
    public void AConvertedWeightIsACopy()
    {
        string dir = TestUtil.CopyFixture("llama-tiny");
        using var model = ModelLoader.Load(dir, ScalarType.BFloat16);
        var norm = Parameter(model, Norm);
        using var before = norm.clone();
        OverwriteInFile(dir, Norm, 7f);
        Assert.True(norm.equal(before).all().item<bool>());
    }

    [Fact]
    public void WritingIntoAMappedWeightNeverChangesTheFile()
    {
        // As merging LoRA into a base weight does: the mapping is private (copy-on-write).
        string dir = TestUtil.CopyFixture("llama-tiny");
        const string q = "model.layers.0.self_attn.q_proj.weight";
        using var model = ModelLoader.Load(dir);
        using (var ckpt = Checkpoint.Open(dir))
        using (var stored = ckpt.Read(q))
        {
            var w = Parameter(model, q);
            Assert.True(w.equal(stored).all().item<bool>());
            using (torch.no_grad()) w.add_(1.0);
            Assert.True(w.equal(stored + 1.0).all().item<bool>());
        }
        using var reopened = Checkpoint.Open(dir);
        using var again = reopened.Read(q);
        using var fixture = Checkpoint.Open(TestUtil.Fixture("llama-tiny"));
        using var original = fixture.Read(q);
        Assert.True(again.equal(original).all().item<bool>());
    }

    [Fact]
    public void AMappedModelOutlivesItsCheckpointAndGivesTheReferenceLogits()
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny", "expected.safetensors"));
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));   // the checkpoint is closed by now
        GC.Collect();
        GC.WaitForPendingFinalizers();
        using var _ = torch.no_grad();
        using var logits = model.Forward(f["input_ids"]);
        Assert.True(TestUtil.MaxAbsDiff(logits, f["logits"]) < 1e-4);
    }
}
