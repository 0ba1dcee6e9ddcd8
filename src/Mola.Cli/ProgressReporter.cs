using Spectre.Console;

namespace Mola.Cli;

/// <summary>A live progress bar on a terminal (on stderr, so stdout stays clean for --json), plain
/// lines when output is redirected or in CI.</summary>
public sealed class ProgressReporter
{
    readonly Output _o;
    public ProgressReporter(Output o) => _o = o;

    /// <summary>Runs <paramref name="work"/> with a callback that takes (done, description).</summary>
    public T Run<T>(string title, long total, Func<Action<long, string>, T> work, int plainEvery = 0)
    {
        if (!_o.Interactive)
        {
            long every = plainEvery > 0 ? plainEvery : Math.Max(1, total / 20);
            long last = -1;
            return work((done, text) =>
            {
                if (done == total || done == 1 || done / every != last / every)
                    Console.Error.WriteLine($"{title} {done}/{total} {text}");
                last = done;
            });
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        T result = default!;
        console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(title), maxValue: Math.Max(1, total));
                result = work((done, text) =>
                {
                    task.Value = done;
                    task.Description = Markup.Escape($"{title} {done}/{total} {text}");
                });
                task.Value = task.MaxValue;
            });
        return result;
    }
}
