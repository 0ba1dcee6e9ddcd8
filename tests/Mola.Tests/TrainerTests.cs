using System.Text.Json;
using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

[Collection(RunsAloneCollection.Name)]   // same-seed runs compare dropout streams of the global generator
public class TrainerTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");
    static readonly string Data = TestUtil.Fixture("train", "small.jsonl");

    /// <summary>A MoLA adapter for llama-tiny's three layers (2, 4, 8 experts; top-k 1, 2, 2; r 4, 4, 8).</summary>
    internal static AdapterConfig Mola(double aux = 0.001, double dropout = 0.0) => new()
    {
        Kind = AdapterKind.Mola,
        TargetModules = [.. TargetModules.All],
        Rank = [4, 4, 8],
        NumExperts = [2, 4, 8],
        TopK = [1, 2, 2],
        LoraAlpha = 16,
        LoraDropout = dropout,
        AuxLossCoef = aux,
    };

    static InstructionDataset Dataset(bool trainOnInputs = true, int take = 40, int cutoff = 64)
    {
        var tok = MolaTokenizer.Load(Llama);
        var records = InstructionRecord.Load(Data).Take(take).ToList();
        return InstructionDataset.Create(records, PromptTemplate.Alpaca, tok, new TokenizeOptions(cutoff, true, trainOnInputs));
    }

    /// <summary>A fresh model + adapter seeded the same way, trained by <paramref name="options"/>; returns the adapter's tensors.</summary>
    static (Dictionary<string, Tensor> Tensors, string Output) TrainOnce(TrainingOptions options, AdapterConfig cfg, InstructionDataset data, InstructionDataset? val = null)
    {
        using var model = ModelLoader.Load(Llama);
        torch.manual_seed(options.Seed);
        var adapter = AdapterModel.Attach(model, cfg);
        // B starts at zero; give it values so that every parameter's gradient is non-trivial.
        using (torch.no_grad())
            foreach (var (_, _, _, m) in adapter.Modules) ((MolaLayer)m).lora_B.copy_(torch.randn(((MolaLayer)m).lora_B.shape) * 0.05);
        string dir = TestUtil.TempDir();
        new Trainer(adapter, data, val, options, dir).Train();
        return (adapter.NamedTensors().ToDictionary(t => t.Name, t => t.Tensor.detach().clone()), dir);
    }

    [Fact]
    public void GradientAccumulationEqualsOneBigBatch()
    {
        // Aux off: the CE of an effective batch is token-weighted, so 4 micro-batches of 2 give the
        // gradient of one batch of 8 (examples of different lengths, prompts masked).
        var data = Dataset(trainOnInputs: false, cutoff: 256);
        var examples = data.Examples.Take(8).ToList();
        Assert.True(examples.Select(e => e.Length).Distinct().Count() > 1);
        using var model = ModelLoader.Load(Llama);
        torch.manual_seed(4);
        var adapter = AdapterModel.Attach(model, Mola(aux: 0));
        using (torch.no_grad())
            foreach (var (_, _, _, m) in adapter.Modules) ((MolaLayer)m).lora_B.copy_(torch.randn(((MolaLayer)m).lora_B.shape) * 0.05);
        var trainer = new Trainer(adapter, data, null, new TrainingOptions { BatchSize = 8, MicroBatchSize = 2 }, TestUtil.TempDir());
        var parameters = adapter.parameters().ToList();

        List<Tensor> Gradients(List<List<TokenizedExample>> micro, out double loss)
        {
            foreach (var p in parameters) p.grad?.zero_();
            loss = trainer.AccumulateGradients(micro, CPU).Loss;
            return parameters.Select(p => p.grad!.clone()).ToList();
        }

        var big = Gradients([examples], out double bigLoss);
        var accumulated = Gradients(examples.Chunk(2).Select(c => c.ToList()).ToList(), out double accLoss);
        // The big batch's loss, computed independently: mean CE over all predicted tokens of the 8.
        using (torch.no_grad())
        using (var batch = InstructionDataset.Collate(examples, CPU))
        using (var logits = model.Forward(batch.InputIds, batch.AttentionMask))
        using (var ce = Losses.CausalLm(logits, batch.Labels))
            Assert.Equal(ce.item<float>(), bigLoss, 5);
        Assert.Equal(bigLoss, accLoss, 5);
        for (int i = 0; i < big.Count; i++)
            Assert.True(TestUtil.MaxAbsDiff(big[i], accumulated[i]) <= 1e-5 * Math.Max(1e-3, big[i].abs().max().item<float>()), $"parameter {i}");
        Assert.Contains(big, g => g.abs().max().item<float>() > 1e-4);
    }

    [Fact]
    public void SameSeedSameRunAndDifferentSeedDifferentRun()
    {
        var data = Dataset();
        var o = new TrainingOptions { LearningRate = 5e-3, WarmupSteps = 1, MaxSteps = 3, BatchSize = 4, MicroBatchSize = 2, SaveSteps = 0, Seed = 5, GroupByLength = true };
        var a = TrainOnce(o, Mola(dropout: 0.1), data);
        var b = TrainOnce(o, Mola(dropout: 0.1), data);
        var c = TrainOnce(o with { Seed = 6 }, Mola(dropout: 0.1), data);
        Assert.All(a.Tensors, kv => Assert.True(TestUtil.BitEqual(kv.Value, b.Tensors[kv.Key]), kv.Key));
        Assert.Contains(a.Tensors, kv => !TestUtil.BitEqual(kv.Value, c.Tensors[kv.Key]));
        var la = File.ReadAllLines(Path.Combine(a.Output, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("loss").GetDouble());
        var lb = File.ReadAllLines(Path.Combine(b.Output, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("loss").GetDouble());
        Assert.Equal(la, lb);
    }

    [Fact]
    public void MetricsLinesHaveTheScheduleAndEveryField()
    {
        var data = Dataset();
        var o = new TrainingOptions { LearningRate = 1e-3, WarmupSteps = 2, MaxSteps = 6, BatchSize = 4, MicroBatchSize = 4, SaveSteps = 2, SaveTotalLimit = 1, Seed = 1 };
        var (_, dir) = TrainOnce(o, Mola(), data);
        var lines = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(6, lines.Count);
        // warm-up 0, 0.5, then linear decay from step 2 to 6: 1, 0.75, 0.5, 0.25 (hand-computed)
        double[] factors = [0, 0.5, 1, 0.75, 0.5, 0.25];
        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(i + 1, lines[i].GetProperty("step").GetInt64());
            Assert.Equal(1e-3 * factors[i], lines[i].GetProperty("lr").GetDouble(), 12);
            foreach (var field in new[] { "loss", "ce_loss", "aux_loss", "grad_norm", "tokens_per_second" })
                Assert.True(lines[i].GetProperty(field).GetDouble() > 0, field);
            double total = lines[i].GetProperty("ce_loss").GetDouble() + 0.001 * lines[i].GetProperty("aux_loss").GetDouble();
            Assert.Equal(total, lines[i].GetProperty("loss").GetDouble(), 5);
        }
        // save every 2 steps, keep 1: checkpoint-2 was deleted, checkpoint-6 is not written (the final adapter is)
        Assert.Equal(["checkpoint-4"], Checkpoints.List(dir).Select(c => Path.GetFileName(c.Path)));
        Assert.True(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));
        Assert.False(Directory.EnumerateDirectories(dir, ".tmp*").Any());
    }

    [Theory]
    [InlineData(1L << 18, false)]   // the default chunk: the 31 elements in one
    [InlineData(7L, false)]         // chunks that end inside parameters, and a last chunk of 3
    [InlineData(1L << 18, true)]    // clipping, the update and zeroing in one pass (as mola train steps)
    [InlineData(7L, true)]
    public void OwnAdamWMatchesTorchSharpsAdamW(long chunkElements, bool onePass)
    {
        // Several parameters of different shapes (ours keeps them in one flat buffer, updated chunk by chunk),
        // weight decay, clipping that bites, and gradients set to null or replaced by the caller in between.
        torch.manual_seed(2);
        long[][] shapes = [[5, 3], [4], [2, 3, 2]];
        var mine = shapes.Select(s => new TorchSharp.Modules.Parameter(torch.randn(s))).ToArray();
        var theirs = mine.Select(p => new TorchSharp.Modules.Parameter(p.detach().clone())).ToArray();
        var ours = new AdamW(mine, 0.01, chunkElements) { WeightDecay = 0.1 };
        var reference = torch.optim.AdamW(theirs, lr: 0.01, weight_decay: 0.1);
        var x = torch.randn(7, 5);
        Tensor Loss(TorchSharp.Modules.Parameter[] p) =>
            x.matmul(p[0]).pow(3).sum() + p[1].pow(2).sum() * 3 + (p[2] * p[2].flip(0)).sum();
        for (int step = 0; step < 6; step++)
        {
            if (!onePass) ours.ZeroGrad();   // the one-pass step zeroed them
            reference.zero_grad();
            if (step == 2) mine[1].grad = null;                                   // as a module's zero_grad(set_to_none) would
            if (step == 4) mine[0].grad = torch.full_like(mine[0], 0.5);          // a gradient the caller put there
            if (step == 4) theirs[0].grad = torch.full_like(theirs[0], 0.5);
            Loss(mine).backward();
            Loss(theirs).backward();
            double norm = onePass ? ours.GradNorm() : ours.ClipGradNorm(1.0);
            double theirNorm = torch.nn.utils.clip_grad_norm_(theirs, 1.0);
            // To float32 rounding (one vector norm over the flat buffer against a norm of per-tensor norms).
            Assert.True(Math.Abs(norm - theirNorm) <= 1e-6 * theirNorm, $"norm {norm} against {theirNorm}");
            Assert.True(norm > 1.0);   // clipping bites
            if (onePass) ours.Step(AdamW.ClipScale(1.0, norm), zeroGradients: true);
            else ours.Step();
            reference.step();
            if (onePass)
                foreach (var p in mine) Assert.Equal(0, p.grad!.abs().max().item<float>());
        }
        for (int i = 0; i < mine.Length; i++)
        {
            Assert.Equal(shapes[i], mine[i].shape);
            Assert.True(TestUtil.MaxAbsDiff(mine[i], theirs[i]) < 1e-6, $"parameter {i}");
        }
    }

    [Fact]
    public void NaNLossStopsAndKeepsTheLastGoodCheckpoint()
    {
        var data = Dataset();
        using var model = ModelLoader.Load(Llama);
        torch.manual_seed(1);
        var adapter = AdapterModel.Attach(model, Mola());
        string dir = TestUtil.TempDir();
        var o = new TrainingOptions { LearningRate = 1e-3, WarmupSteps = 0, MaxSteps = 10, BatchSize = 4, MicroBatchSize = 4, SaveSteps = 2, Seed = 1 };
        var trainer = new Trainer(adapter, data, null, o, dir);
        // Poison the adapter after the checkpoint of step 2: the next loss is NaN.
        trainer.OnStep = m =>
        {
            if (m.Step == 3)
                using (torch.no_grad()) ((MolaLayer)adapter.Modules[0].Adapter).lora_B.fill_(double.NaN);
        };
        var e = Assert.Throws<MolaException>(() => trainer.Train());
        Assert.Contains("step 4: the loss is NaN", e.Message);
        Assert.Contains("checkpoint-2", e.Message);
        Assert.Equal(3, File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Length);
        Assert.False(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));   // no final adapter from a broken run
        var good = TestUtil.ReadAll(Path.Combine(dir, "checkpoint-2", "adapter_model.safetensors"));
        Assert.All(good.Values, t => Assert.False(t.isnan().any().item<bool>()));
    }

    [Fact]
    public void AMicroBatchWithNothingToLearnAddsNoCeAndNoNaN()
    {
        // A prompt longer than the cutoff with train-on-inputs off leaves every label -100.
        var tok = MolaTokenizer.Load(Llama);
        var template = new PromptTemplate("short", "test", "{instruction} {input}\n", "{instruction}\n", "");
        var records = new List<InstructionRecord>
        {
            new(string.Join(" ", Enumerable.Repeat("the cell energy of a plant", 10)), "", "water"),
            new("rock", "", "soil and water"),
        };
        var data = InstructionDataset.Create(records, template, tok, new TokenizeOptions(24, AddEos: false, TrainOnInputs: false));
        Assert.All(data.Examples[0].Labels, l => Assert.Equal(-100, l));
        using var model = ModelLoader.Load(Llama);
        torch.manual_seed(1);
        var adapter = AdapterModel.Attach(model, Mola(aux: 0));
        var trainer = new Trainer(adapter, data, null, new TrainingOptions { BatchSize = 2, MicroBatchSize = 1 }, TestUtil.TempDir());
        var (loss, ce, _, _) = trainer.AccumulateGradients([[data.Examples[0]], [data.Examples[1]]], CPU);
        using var batch = InstructionDataset.Collate([data.Examples[1]], CPU);
        using var logits = model.Forward(batch.InputIds, batch.AttentionMask);
        using var want = Losses.CausalLm(logits, batch.Labels);
        Assert.Equal(want.item<float>(), loss, 5);
        Assert.Equal(want.item<float>(), ce, 5);
        Assert.All(adapter.parameters(), p => Assert.False(p.grad is { } g && g.isnan().any().item<bool>()));
    }

    [Fact]
    public void OptionsAreCheckedBeforeAnythingRuns()
    {
        Assert.Contains("is larger than batch_size", Assert.Throws<MolaException>(() => new TrainingOptions { BatchSize = 4, MicroBatchSize = 8 }.Validate()).Message);
        Assert.Contains("multiple of micro_batch_size", Assert.Throws<MolaException>(() => new TrainingOptions { BatchSize = 10, MicroBatchSize = 4 }.Validate()).Message);
        Assert.Contains("learning_rate", Assert.Throws<MolaException>(() => new TrainingOptions { LearningRate = 0 }.Validate()).Message);
    }
}
