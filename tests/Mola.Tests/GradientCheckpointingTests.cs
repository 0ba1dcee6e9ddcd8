using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>Gradient checkpointing (<see cref="AdapterModel.CheckpointedBackward"/>) against the plain forward +
/// backward and against the float64 reference's gradients.</summary>
[Collection(RunsAloneCollection.Name)]   // dropout streams of the global generator are compared
public class GradientCheckpointingTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    [Fact]
    public void CheckpointedGradientsMatchTheReference()
    {
        var f = TestUtil.ReadAll(TestUtil.Fixture("llama-tiny-mola", "expected.safetensors"));
        using var model = ModelLoader.Load(Llama);
        var adapter = AdapterModel.Load(model, TestUtil.Fixture("llama-tiny-mola"));
        var (ce, aux) = adapter.CheckpointedBackward(f["input_ids"], null, f["labels"], 1.0, adapter.Config.AuxLossCoef);
        Assert.True(TestUtil.RelDiff(ce, f["ce_loss"]) < 1e-5);
        Assert.True(TestUtil.RelDiff(aux, f["aux_loss"]) < 1e-5);
        int checkedGrads = 0;
        foreach (var (key, want) in f.Where(kv => kv.Key.StartsWith("grad.")))
        {
            var got = AdapterModelTests.GradOf(adapter, key["grad.".Length..]);
            Assert.True(TestUtil.MaxAbsDiff(got, want) < 1e-4, $"{key}: max |diff| {TestUtil.MaxAbsDiff(got, want):E2}");
            checkedGrads++;
        }
        Assert.Equal(3 * 7 + 7 * 2 * (2 + 4 + 8), checkedGrads);
        Assert.All(model.parameters(), p => Assert.Null(p.grad));
    }

    static AdapterConfig Config(AdapterKind kind, double dropout) => new()
    {
        Kind = kind,
        TargetModules = [.. TargetModules.All],
        Rank = [4, 4, 8],
        NumExperts = kind == AdapterKind.Mola ? [2, 4, 8] : [],
        TopK = kind == AdapterKind.Mola ? [1, 2, 2] : [],
        LoraAlpha = 16,
        LoraDropout = dropout,
        AuxLossCoef = kind == AdapterKind.Mola ? 0.01 : 0,
    };

    /// <summary>A padded batch of three examples of different lengths, as training collates them.</summary>
    static Batch PaddedBatch()
    {
        var tok = MolaTokenizer.Load(Llama);
        var records = InstructionRecord.Load(TestUtil.Fixture("train", "small.jsonl")).Take(3).ToList();
        var data = InstructionDataset.Create(records, PromptTemplate.Alpaca, tok, new TokenizeOptions(256, true, false));
        Assert.True(data.Examples.Select(e => e.Length).Distinct().Count() > 1, "the examples should differ in length, so that padding is exercised");
        return InstructionDataset.Collate(data.Examples.ToList(), CPU);
    }

    /// <summary>The adapter's gradients after one weighted backward, plain or checkpointed, from the same seed;
    /// with the losses and the generator's state afterwards.</summary>
    static (List<Tensor> Grads, float Ce, float Aux, byte[] Rng) Step(AdapterKind kind, double dropout, bool checkpoint, double ceWeight)
    {
        using var model = ModelLoader.Load(Llama);
        torch.manual_seed(7);
        var adapter = AdapterModel.Attach(model, Config(kind, dropout));
        using (torch.no_grad())   // B starts at zero; values make every gradient non-trivial
            foreach (var p in adapter.named_parameters().Where(p => p.name.EndsWith("lora_B")))
                p.parameter.copy_(torch.randn(p.parameter.shape) * 0.05);
        adapter.train();
        using var batch = PaddedBatch();
        const double auxWeight = 0.5;
        Tensor ce, aux;
        if (checkpoint)
            (ce, aux) = adapter.CheckpointedBackward(batch.InputIds, batch.AttentionMask, batch.Labels, ceWeight, auxWeight);
        else
        {
            var output = adapter.Forward(batch.InputIds, batch.AttentionMask, batch.Labels);
            (output.CeLoss! * ceWeight + output.AuxLoss! * auxWeight).backward();
            (ce, aux) = (output.CeLoss!, output.AuxLoss!);
        }
        using var rng = random.get_rng_state();
        var grads = adapter.parameters().Select(p => p.grad!.detach().clone()).ToList();
        return (grads, ce.item<float>(), aux.item<float>(), rng.data<byte>().ToArray());
    }

    [Theory]
    [InlineData("mola", 0.0)]
    [InlineData("mola", 0.1)]
    [InlineData("lora", 0.0)]
    [InlineData("lora", 0.1)]
    public void CheckpointedGradientsEqualThePlainBackward(string kind, double dropout)
    {
        var k = AdapterKinds.Parse(kind);
        var plain = Step(k, dropout, checkpoint: false, ceWeight: 0.75);
        var ckpt = Step(k, dropout, checkpoint: true, ceWeight: 0.75);
        Assert.Equal(plain.Ce, ckpt.Ce);
        Assert.Equal(plain.Aux, ckpt.Aux);   // counted once
        if (k == AdapterKind.Mola) Assert.True(plain.Aux > 0);
        // The generator ends where the plain pass leaves it, so the next micro-batch draws the same dropout masks.
        Assert.Equal(plain.Rng, ckpt.Rng);
        Assert.Equal(plain.Grads.Count, ckpt.Grads.Count);
        for (int i = 0; i < plain.Grads.Count; i++)
        {
            double scale = plain.Grads[i].abs().max().item<float>();
            Assert.True(scale > 0, $"parameter {i} has a zero gradient");
            double diff = TestUtil.MaxAbsDiff(plain.Grads[i], ckpt.Grads[i]);
            Assert.True(diff <= 1e-6 * scale, $"parameter {i}: max |diff| {diff:E2} against max |grad| {scale:E2}");
        }
    }

    [Fact]
    public void OnlyTheBalanceLossCountsWhenTheCeHasNoWeight()
    {
        // A micro-batch with nothing to predict gives its CE weight 0; the router still learns from the balance loss.
        var plain = Step(AdapterKind.Mola, 0.0, checkpoint: false, ceWeight: 0);
        var ckpt = Step(AdapterKind.Mola, 0.0, checkpoint: true, ceWeight: 0);
        for (int i = 0; i < plain.Grads.Count; i++)
            Assert.True(TestUtil.MaxAbsDiff(plain.Grads[i], ckpt.Grads[i]) <= 1e-9 + 1e-6 * plain.Grads[i].abs().max().item<float>());
        Assert.Contains(ckpt.Grads, g => g.abs().max().item<float>() > 0);
    }

    [Fact]
    public void TrainingWithCheckpointingGivesTheSameRun()
    {
        var tok = MolaTokenizer.Load(Llama);
        var records = InstructionRecord.Load(TestUtil.Fixture("train", "small.jsonl")).Take(16).ToList();
        var data = InstructionDataset.Create(records, PromptTemplate.Alpaca, tok, new TokenizeOptions(64, true, true));
        (List<StepMetrics> Metrics, List<Tensor> Weights) Run(bool checkpoint)
        {
            using var model = ModelLoader.Load(Llama);
            torch.manual_seed(3);
            var adapter = AdapterModel.Attach(model, Config(AdapterKind.Mola, 0.05));
            var options = new TrainingOptions
            {
                BatchSize = 4,
                MicroBatchSize = 2,
                MaxSteps = 4,
                WarmupSteps = 1,
                LearningRate = 3e-3,
                SaveSteps = 0,
                Seed = 3,
                GradientCheckpointing = checkpoint,
            };
            var metrics = new List<StepMetrics>();
            var trainer = new Trainer(adapter, data, null, options, TestUtil.TempDir()) { OnStep = metrics.Add };
            trainer.Train();
            return (metrics, adapter.parameters().Select(p => p.detach().clone()).ToList());
        }
        var plain = Run(false);
        var ckpt = Run(true);
        Assert.Equal(4, ckpt.Metrics.Count);
        for (int s = 0; s < 4; s++)
        {
            Assert.Equal(plain.Metrics[s].Loss, ckpt.Metrics[s].Loss, 5);
            Assert.Equal(plain.Metrics[s].AuxLoss, ckpt.Metrics[s].AuxLoss, 5);
            Assert.Equal(plain.Metrics[s].GradNorm, ckpt.Metrics[s].GradNorm, 4);
        }
        for (int i = 0; i < plain.Weights.Count; i++)
            Assert.True(TestUtil.MaxAbsDiff(plain.Weights[i], ckpt.Weights[i]) < 1e-5, $"parameter {i} differs after training");
    }
}
