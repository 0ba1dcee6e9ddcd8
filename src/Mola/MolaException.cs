namespace Mola;

/// <summary>An error in the user's input (a file, a key, an option). The CLI prints its message
/// as one line and exits non-zero, without a stack trace.</summary>
public sealed class MolaException : Exception
{
    public MolaException(string message) : base(message) { }
    public MolaException(string message, Exception inner) : base(message, inner) { }
}
