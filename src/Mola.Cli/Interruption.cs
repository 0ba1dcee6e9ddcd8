using System.Runtime.InteropServices;

namespace Mola.Cli;

/// <summary>SIGINT (Ctrl-C) and SIGTERM while a command runs: the first asks it to stop at the next safe point
/// (<see cref="Token"/>), a second exits at once. The exit codes are the shell's: 130 for SIGINT, 143 for SIGTERM.</summary>
public sealed class Interruption : IDisposable
{
    readonly CancellationTokenSource _stop = new();
    readonly PosixSignalRegistration[] _registrations;
    int _exitCode;

    public Interruption() =>
        _registrations = [PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle), PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle)];

    public CancellationToken Token => _stop.Token;

    /// <summary>The exit code of the first signal received (null: none).</summary>
    public int? ExitCode => _exitCode == 0 ? null : _exitCode;

    void Handle(PosixSignalContext context)
    {
        int code = context.Signal == PosixSignal.SIGINT ? 130 : 143;
        context.Cancel = true;   // the run stops itself, after saving
        if (Interlocked.CompareExchange(ref _exitCode, code, 0) != 0) ExitNow(code);
        _stop.Cancel();
    }

    /// <summary>Ends the process without the runtime's shutdown, which crashes while libtorch computes on another thread
    /// (measured: SIGSEGV). Whatever is on disk is consistent: checkpoints are renamed into place whole, and a resume
    /// drops a half-written metrics line.</summary>
    static void ExitNow(int code) => Mola.Platform.Native.ExitNow(code);

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _stop.Dispose();
    }
}
