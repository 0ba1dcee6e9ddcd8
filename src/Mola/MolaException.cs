namespace Mola;

/// <summary>An error in the user's input (a file, a key, a value). The CLI prints its message
/// as one line and exits non-zero, without a stack trace.</summary>
public sealed class MolaException : Exception
{
    readonly Func<Func<string, string>, string>? _message;

    public MolaException(string message) : base(message) { }
    public MolaException(string message, Exception inner) : base(message, inner) { }

    /// <summary>A message that names settings: <paramref name="message"/> writes each through the function it gets,
    /// given the setting's key (<c>micro_batch_size</c>, as in training_args.json). The library's message writes the
    /// key; a front end writes its own name for it (<see cref="Render"/>: the CLI's option, <c>--micro-batch-size</c>).</summary>
    public MolaException(Func<Func<string, string>, string> message) : base(message(key => key)) => _message = message;

    /// <summary>The message with each setting it names written by <paramref name="name"/>.</summary>
    public string Render(Func<string, string> name) => _message is null ? Message : _message(name);
}
