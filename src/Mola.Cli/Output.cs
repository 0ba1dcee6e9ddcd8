using System.Text.Json;

namespace Mola.Cli;

/// <summary>Human lines go to stdout, or to stderr under --json; the result object goes to stdout.</summary>
public sealed class Output(bool json)
{
    public bool Json { get; } = json;
    public TextWriter Human => Json ? Console.Error : Console.Out;

    /// <summary>Whether a live progress display makes sense (a terminal, not a pipe or CI log).</summary>
    public bool Interactive => !Console.IsErrorRedirected && Environment.GetEnvironmentVariable("CI") is null;

    public void Line(string text) => Human.WriteLine(text);

    public void Result(object result)
    {
        if (Json) Console.Out.WriteLine(JsonSerializer.Serialize(result, Cli.JsonOptions));
    }
}
