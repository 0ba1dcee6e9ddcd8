using Xunit;

namespace Mola.Tests;

/// <summary>
/// Test classes that must not run beside others: those that read this process's resident memory (parallel
/// tests would disturb it), those that change a static every reader sees (SafeTensorsFile.MaxSpanBytes), and
/// those that reseed libtorch's one global generator to reproduce a random stream (dropout masks), which a
/// test running beside them could advance.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RunsAloneCollection
{
    public const string Name = "runs alone";
}
