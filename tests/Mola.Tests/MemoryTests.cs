using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;
using TorchSharp;
using Xunit;

namespace Mola.Tests;

[Trait("Category", "Slow")]
[Collection(RunsAloneCollection.Name)]   // reads this process's resident memory
public class MemoryTests
{
    static long ResidentBytes()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        using var p = System.Diagnostics.Process.GetCurrentProcess();
        return p.WorkingSet64;
    }

    [Fact]
    public void TrainingMemoryStaysFlatFromStep20ToStep200()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        torch.manual_seed(1);
        var adapter = AdapterModel.Attach(model, new AdapterConfig
        {
            Kind = AdapterKind.Mola,
            TargetModules = [.. TargetModules.All],
            Rank = [4, 4, 8],
            NumExperts = [2, 4, 8],
            TopK = [1, 2, 2],
            LoraAlpha = 16,
            LoraDropout = 0.05,
            AuxLossCoef = 0.001,
        });
        var tok = MolaTokenizer.Load(TestUtil.Fixture("llama-tiny"));
        var records = InstructionRecord.Load(TestUtil.Fixture("train", "small.jsonl"));
        var data = InstructionDataset.Create(records, PromptTemplate.Alpaca, tok, new TokenizeOptions(48, true, false));
        var options = new TrainingOptions { LearningRate = 1e-3, WarmupSteps = 5, MaxSteps = 200, BatchSize = 4, MicroBatchSize = 2, SaveSteps = 0, Seed = 1 };
        var trainer = new Trainer(adapter, data, null, options, TestUtil.TempDir());
        long at20 = 0, at200 = 0;
        trainer.OnStep = m =>
        {
            if (m.Step == 20) at20 = ResidentBytes();
            if (m.Step == 200) at200 = ResidentBytes();
        };
        trainer.Train();
        Assert.True(at20 > 0 && at200 > 0);
        double growth = (double)(at200 - at20) / at20;
        Assert.True(growth < 0.10, $"resident memory grew {growth:P1} from step 20 ({at20 / 1048576} MiB) to step 200 ({at200 / 1048576} MiB)");
    }
}
