using Mola.Adapters;
using Mola.Models;
using Mola.Platform;
using Mola.Training;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

public class MemoryPlanTests
{
    static readonly ModelConfig Tiny = ModelConfig.Load(TestUtil.Fixture("llama-tiny"));   // h 64, i 160, 4 heads of 16, vocab 400, 3 layers

    [Fact]
    public void LoraPlanAddsUpTheSavedTensorsByHand()
    {
        // LoRA r 8 on q_proj, bfloat16 base (2 bytes), micro-batch 2 x 10 tokens, dropout on. Per token and layer:
        // norms 2*4*64 = 512, attention 7*64*2 = 896, MLP 3*160*2 = 960, q_proj's float32 input 4*64 = 256, its dropout
        // mask and output 8*64 = 512, its [N, r] product 4*8 = 32: 3,168 bytes.
        var counts = ParameterCount.Lora(Tiny, [8, 8, 8], ["q_proj"]);
        var plan = MemoryPlan.Estimate(Tiny, counts, ScalarType.BFloat16, 2, 10, gradientCheckpointing: false, dropout: 0.05);
        Assert.Equal(2 * counts.Base, plan.BaseWeightsBytes);
        Assert.Equal(3 * 8 * (64 + 64), counts.Total);
        Assert.Equal(16 * 3072, plan.AdapterWeightsBytes + plan.AdapterGradientsBytes + plan.OptimizerStateBytes);
        Assert.Equal(3 * 20 * 3168, plan.ActivationBytes);
        Assert.Equal(20 * 400 * (2 + 16), plan.HeadBytes);   // logits, float32 copy, log-softmax, two float32 gradients
        Assert.Equal(plan.BaseWeightsBytes + 16 * 3072 + 3 * 20 * 3168 + 20 * 400 * 18 + MemoryPlan.Runtime, plan.TotalBytes);

        // Checkpointed: the three layer inputs (20 x 64 x 2 bytes each) and one layer recomputed, the head as before.
        var ckpt = MemoryPlan.Estimate(Tiny, counts, ScalarType.BFloat16, 2, 10, gradientCheckpointing: true, dropout: 0.05);
        Assert.Equal(3 * 20 * 64 * 2 + 20 * 3168, ckpt.ActivationBytes);
        Assert.Equal(20 * 400 * 18, ckpt.HeadBytes);
    }

    [Fact]
    public void MolaLayerTermsFollowTheLayerShapes()
    {
        // Layer 2 of experts 2,4,8 / top-k 1,2,2 / rank 4 on all seven modules, float32 base, no dropout, per token:
        // norms 512, attention 7*64*4 = 1,792, MLP 3*160*4 = 1,920; float32 inputs: one for q/k/v, o, one for gate/up,
        // down's 160 wide: 4*(64+64+64+160) = 1,408; per module 4*(2*8*4 + 5*8) + 24*2 = 464, seven: 3,248. Sum 8,880.
        var counts = ParameterCount.Mola(Tiny, [2, 4, 8], [1, 2, 2], [4, 4, 4], TargetModules.All);
        Assert.Equal(8880, MemoryPlan.LayerBytesPerToken(Tiny, counts, counts.Layers[2], 4, dropout: false));
        // Dropout adds a float32 mask and output per module: 8 * (6*64 + 160).
        Assert.Equal(8880 + 8 * (6 * 64 + 160), MemoryPlan.LayerBytesPerToken(Tiny, counts, counts.Layers[2], 4, dropout: true));
    }

    [Trait("Category", "Slow")]
    [Fact]
    public void TrainRefusesARunAboveTheMemoryLimitBeforeLoadingAndTheFlagOverrides()
    {
        string dir = Path.Combine(TestUtil.TempDir(), "run");
        var limit = new Dictionary<string, string> { [AvailableMemory.LimitVariable] = "64M" };   // below the runtime alone
        var refused = CliRunner.RunWithEnvironment(limit, TrainCliTests.Args(dir, "--max-steps", "1", "--save-steps", "0"));
        string error = refused.SingleErrorLine();
        Assert.Matches(@"^training needs about [\d.]+ GiB at its peak, more than the 0\.06 GiB allowed by MOLA_MEMORY_LIMIT \(micro-batch 2 x 96 tokens, base float32, gradient checkpointing off\): try ", error);
        foreach (var option in new[] { "--micro-batch-size", "--gradient-checkpointing", "--dtype", "--cutoff-len", "--skip-memory-check" })
            Assert.Contains(option, error);
        Assert.False(Directory.Exists(dir));   // refused before the output directory was made or the model loaded

        var forced = CliRunner.RunWithEnvironment(limit, TrainCliTests.Args(dir, "--max-steps", "1", "--save-steps", "0", "--skip-memory-check"));
        Assert.True(forced.ExitCode == 0, forced.ToString());
        Assert.Contains("warning: training needs about", forced.Stdout);   // human output: stdout without --json
        Assert.True(File.Exists(Path.Combine(dir, AdapterFile.WeightsFile)));

        var bad = CliRunner.RunWithEnvironment(new Dictionary<string, string> { [AvailableMemory.LimitVariable] = "lots" }, TrainCliTests.Args(dir));
        Assert.Equal("MOLA_MEMORY_LIMIT=lots: expected a positive number of bytes, optionally with K, M or G (e.g. 6G)", bad.SingleErrorLine());
    }
}
