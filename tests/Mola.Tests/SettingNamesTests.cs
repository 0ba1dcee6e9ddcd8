using Mola.Adapters;
using Mola.Cli;
using Mola.Training;
using Xunit;

namespace Mola.Tests;

/// <summary>The library names a setting by its key; the CLI writes its option for the same error.</summary>
public class SettingNamesTests
{
    [Fact]
    public void TheLibraryNamesKeysAndTheCliItsOptions()
    {
        var e = Assert.Throws<MolaException>(() => new TrainingOptions { BatchSize = 2, MicroBatchSize = 4 }.Validate());
        Assert.Equal("micro_batch_size (4) is larger than batch_size (2); the batch is made of micro-batches", e.Message);
        Assert.Equal("--micro-batch-size (4) is larger than --batch-size (2); the batch is made of micro-batches", e.Render(Cli.Cli.OptionName));

        // Keys whose option is spelled otherwise, and a label that is an option already.
        var alpha = Assert.Throws<MolaException>(() => new AdapterSpec { Alpha = -1 }.Validate());
        Assert.Equal("lora_alpha must be a positive finite number, got -1", alpha.Message);
        Assert.Equal("--alpha must be a positive finite number, got -1", alpha.Render(Cli.Cli.OptionName));
        var experts = Assert.Throws<MolaException>(() => ExpertAllocation.ParseExperts("2,x", 2, "--allocation"));
        Assert.StartsWith("--allocation 2,x: \"x\" is not a positive integer", experts.Render(Cli.Cli.OptionName));
        // A message that names no setting renders as it is.
        Assert.Equal("plain", new MolaException("plain").Render(Cli.Cli.OptionName));
    }
}
