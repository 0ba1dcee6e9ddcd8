using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace Mola.Tests;

/// <summary>What one run of the CLI did.</summary>
sealed record CliResult(int ExitCode, string Stdout, string Stderr, string CommandLine)
{
    /// <summary>The result object: the last non-empty stdout line, parsed as JSON.</summary>
    public JsonElement LastJson()
    {
        var last = Lines(Stdout).LastOrDefault()
            ?? throw new Xunit.Sdk.XunitException($"no stdout from {this}");
        try
        {
            using var doc = JsonDocument.Parse(last);
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new Xunit.Sdk.XunitException($"last stdout line is not JSON ({e.Message}) from {this}");
        }
    }

    /// <summary>Asserts that the run failed the way user errors must fail: exit code 1 (what the CLI returns for
    /// a MolaException; 2 means an unexpected exception), exactly one <c>error: </c> line on stderr, no stack
    /// trace, no result object. Returns the message after <c>error: </c>.</summary>
    public string SingleErrorLine()
    {
        Assert.True(ExitCode == 1, $"expected exit code 1 (a user error) from {this}");
        var lines = Lines(Stderr).ToList();
        Assert.True(lines.Count == 1 && lines[0].StartsWith("error: ", StringComparison.Ordinal), $"expected exactly one 'error: ' line on stderr from {this}");
        Assert.DoesNotContain("   at ", Stderr);
        Assert.True(Lines(Stdout).All(l => !l.TrimStart().StartsWith('{')), $"a failed run printed a result object: {this}");
        return lines[0]["error: ".Length..];
    }

    /// <summary>Like <see cref="SingleErrorLine"/> for a run that failed after it started (its progress lines are on
    /// stderr too): exit code 1, one <c>error: </c> line and it is the last, no stack trace.</summary>
    public string LastErrorLine()
    {
        Assert.True(ExitCode == 1, $"expected exit code 1 (a user error) from {this}");
        var lines = Lines(Stderr).ToList();
        Assert.True(lines.Count(l => l.StartsWith("error: ", StringComparison.Ordinal)) == 1 && lines[^1].StartsWith("error: ", StringComparison.Ordinal),
            $"expected one 'error: ' line, the last on stderr, from {this}");
        Assert.DoesNotContain("   at ", Stderr);
        return lines[^1]["error: ".Length..];
    }

    static IEnumerable<string> Lines(string s) => s.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0);

    public override string ToString() => $"`{CommandLine}` (exit {ExitCode})\n--- stdout:\n{Stdout}\n--- stderr:\n{Stderr}";
}

/// <summary>The one way tests run the <c>mola</c> CLI: out of process, as a user would (<c>dotnet Mola.Cli.dll args...</c>;
/// the test project references Mola.Cli, so the DLL sits in the test output directory), or in-process through the real
/// command tree (<see cref="RunInProcess"/>, thousands of runs a second for the fuzz suite).</summary>
static class CliRunner
{
    static readonly string CliDll = Path.Combine(AppContext.BaseDirectory, "Mola.Cli.dll");

    public static CliResult Run(params string[] args) => Run(args, TimeSpan.FromSeconds(60));

    public static CliResult Run(IReadOnlyList<string> args, TimeSpan timeout, string? workingDirectory = null) =>
        Run(args, timeout, workingDirectory, null, null);

    /// <summary>Runs the CLI with <paramref name="environment"/> added to (or replacing in) the test process's environment.</summary>
    public static CliResult RunWithEnvironment(IReadOnlyDictionary<string, string> environment, params string[] args) =>
        Run(args, TimeSpan.FromSeconds(60), null, null, environment: environment);

    /// <summary>Runs the CLI and sends it <paramref name="signal"/> (e.g. "INT", "TERM", as <c>kill -s</c> names them) once
    /// <paramref name="ready"/> says so (polled every 10 ms), then waits for it to end.</summary>
    public static CliResult RunAndSignal(IReadOnlyList<string> args, Func<bool> ready, string signal, TimeSpan timeout) =>
        Run(args, timeout, null, p =>
        {
            var clock = Stopwatch.StartNew();
            while (!ready() && !p.HasExited && clock.Elapsed < timeout) Thread.Sleep(10);
            if (!p.HasExited) Signal(p.Id, signal);
        }, null);

    /// <summary>Sends a POSIX signal with the system's <c>kill</c>.</summary>
    public static void Signal(int pid, string signal)
    {
        using var kill = Process.Start("kill", ["-s", signal, pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
    }

    /// <summary>Runs the CLI under a launcher (<c>mpirun -np 2</c>): <paramref name="launcher"/> is its command line up to the
    /// program, <paramref name="environment"/> adds variables.</summary>
    public static CliResult RunUnder(IReadOnlyList<string> launcher, IReadOnlyDictionary<string, string> environment, IReadOnlyList<string> args,
        TimeSpan timeout, Action<Process>? whileRunning = null) =>
        Run(args, timeout, null, whileRunning, launcher, environment);

    static CliResult Run(IReadOnlyList<string> args, TimeSpan timeout, string? workingDirectory, Action<Process>? whileRunning,
        IReadOnlyList<string>? launcher = null, IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo(launcher?[0] ?? DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? AppContext.BaseDirectory,
        };
        if (launcher is not null)
            foreach (var a in launcher.Skip(1).Append(DotnetHost())) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(CliDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        // The CLI prints stack traces only under MOLA_DEBUG; tests check what users see.
        psi.Environment.Remove("MOLA_DEBUG");
        psi.Environment.Remove(Mola.Platform.AvailableMemory.LimitVariable);   // the machine's own figure unless a test sets one
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        string commandLine = (launcher is null ? "" : string.Join(' ', launcher) + " ") + "mola " + string.Join(' ', args);

        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {psi.FileName}");
        // Read both pipes concurrently so a full pipe buffer can never block the child.
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        whileRunning?.Invoke(p);
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            throw new TimeoutException($"`{commandLine}` did not finish in {timeout.TotalSeconds:F0} s\n--- stdout:\n{stdout.Result}\n--- stderr:\n{stderr.Result}");
        }
        return new CliResult(p.ExitCode, stdout.Result, stderr.Result, commandLine);
    }

    /// <summary>Runs <c>Cli.Execute</c> in this process with stdout and stderr captured.</summary>
    public static CliResult RunInProcess(IReadOnlyList<string> args)
    {
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        var (savedOut, savedError) = (Console.Out, Console.Error);
        Console.SetOut(stdout);
        Console.SetError(stderr);
        int code;
        try { code = Mola.Cli.Cli.Execute([.. args]); }
        finally
        {
            Console.SetOut(savedOut);
            Console.SetError(savedError);
        }
        return new CliResult(code, stdout.ToString(), stderr.ToString(), "mola " + string.Join(' ', args));
    }

    /// <summary>Starts the CLI without waiting (output discarded), for tests that interrupt a run.</summary>
    public static Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo(DotnetHost()) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(CliDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {psi.FileName}");
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    /// <summary>The dotnet host running these tests (the SDK sets DOTNET_HOST_PATH), else the one on PATH.</summary>
    static string DotnetHost()
    {
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host)) return host;
        string? self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
        return "dotnet";
    }
}
