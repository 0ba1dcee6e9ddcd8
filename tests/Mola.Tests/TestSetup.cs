using System.Runtime.CompilerServices;

namespace Mola.Tests;

static class TestSetup
{
    // What the CLI does first (libtorch environment, threads, allocator), before any test touches TorchSharp.
    [ModuleInitializer]
    internal static void Initialise() => Mola.Platform.Native.Initialise();
}
