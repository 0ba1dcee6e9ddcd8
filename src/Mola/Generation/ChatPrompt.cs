using Mola.Data;

namespace Mola.Generation;

/// <summary>A chat request that the server or the chat client refuses (HTTP 400), naming the request's field.</summary>
public sealed class InvalidRequestException(string param, string message) : Exception(message)
{
    public string Param { get; } = param;
}

/// <summary>
/// Chat messages in the adapter's training template. The template holds one instruction and an optional input, so:
/// the last message is the user's instruction; system messages become its input (joined by blank lines); earlier
/// user turns with the assistant's replies are rendered as the training examples were, prompt then response.
/// </summary>
public static class ChatPrompt
{
    public static string Render(PromptTemplate template, IReadOnlyList<(string Role, string Content)> messages)
    {
        if (messages.Count == 0) throw new InvalidRequestException("messages", "messages: expected at least one message");
        var system = new List<string>();
        var text = new System.Text.StringBuilder();
        string? pending = null;   // a user turn waiting for the assistant's reply
        for (int i = 0; i < messages.Count; i++)
        {
            var (role, content) = messages[i];
            switch (role)
            {
                case "system" or "developer":
                    system.Add(content);
                    break;
                case "user":
                    if (pending is not null)
                        throw new InvalidRequestException($"messages[{i}]", $"messages[{i}]: two user messages in a row (the template holds one instruction per turn)");
                    pending = content;
                    break;
                case "assistant":
                    if (pending is null)
                        throw new InvalidRequestException($"messages[{i}]", $"messages[{i}]: an assistant message must follow a user message");
                    text.Append(template.Prompt(pending)).Append(content).Append("\n\n");
                    pending = null;
                    break;
                default:
                    throw new InvalidRequestException($"messages[{i}].role", $"messages[{i}].role: expected system, user or assistant, got \"{role}\"");
            }
        }
        if (pending is null) throw new InvalidRequestException("messages", "messages: the last message must be the user's (the instruction to answer)");
        return text.Append(template.Prompt(pending, system.Count == 0 ? null : string.Join("\n\n", system))).ToString();
    }
}
