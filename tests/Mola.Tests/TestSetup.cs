using System.Runtime.CompilerServices;

namespace Mola.Tests;

static class TestSetup
{
    // Tests may touch TorchSharp before any Mola type: set libtorch's environment first.
    [ModuleInitializer]
    internal static void Initialise() => Mola.NativeEnvironment.Initialise();
}
