using System.Runtime.CompilerServices;
using Mola.Data;
using Microsoft.Extensions.AI;

namespace Mola.Generation;

/// <summary>
/// The serving engine as a <c>Microsoft.Extensions.AI</c> chat client, in-process: messages are rendered with the
/// training template (<see cref="ChatPrompt"/>) or a model's chat template (<see cref="ChatTemplate"/>), <see cref="ChatOptions.ModelId"/> picks an adapter by name (the
/// base model's name, or none, for the base alone), and requests batch with any others on the same engine. Defaults
/// as the HTTP server's: temperature 1 (0 is greedy), max tokens as many as the model's positions leave.
/// </summary>
public sealed class MolaChatClient(BatchEngine engine, IChatFormat format) : IChatClient
{
    /// <summary>Messages in the training template <paramref name="template"/>.</summary>
    public MolaChatClient(BatchEngine engine, PromptTemplate template) : this(engine, new TrainingChatFormat(template)) { }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (job, model) = Submit(messages, options, cancellationToken);
        var result = await job.Result.WaitAsync(cancellationToken).ConfigureAwait(false);
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, result.Text))
        {
            ModelId = model,
            FinishReason = Finish(result.FinishReason),
            Usage = new UsageDetails { InputTokenCount = result.PromptTokens, OutputTokenCount = result.Tokens.Count, TotalTokenCount = result.PromptTokens + result.Tokens.Count },
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (job, model) = Submit(messages, options, cancellationToken);
        await foreach (var delta in job.Deltas.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            yield return new ChatResponseUpdate(ChatRole.Assistant, delta) { ModelId = model };
        var result = await job.Result.ConfigureAwait(false);
        yield return new ChatResponseUpdate
        {
            Role = ChatRole.Assistant,
            ModelId = model,
            FinishReason = Finish(result.FinishReason),
            Contents = [new UsageContent(new UsageDetails { InputTokenCount = result.PromptTokens, OutputTokenCount = result.Tokens.Count, TotalTokenCount = result.PromptTokens + result.Tokens.Count })],
        };
    }

    (EngineJob Job, string Model) Submit(IEnumerable<ChatMessage> messages, ChatOptions? options, CancellationToken cancellationToken)
    {
        string model = options?.ModelId ?? engine.BaseModelName;
        int adapter = engine.FindModel(model);
        var prompt = format.Encode(engine.Tokenizer, messages.Select(m => (m.Role.Value, m.Text)).ToList());
        var settings = new RequestSettings
        {
            MaxTokens = options?.MaxOutputTokens,
            Temperature = options?.Temperature,
            TopP = options?.TopP,
            Seed = options?.Seed,
            Stop = options?.StopSequences?.ToList() ?? [],
        };
        return (engine.Submit(engine.Prepare(prompt, "messages", adapter, settings, null, cancellationToken)), model);
    }

    static ChatFinishReason Finish(string reason) => reason == "length" ? ChatFinishReason.Length : ChatFinishReason.Stop;

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is null && serviceType.IsInstanceOfType(this) ? this : null;

    /// <summary>The engine belongs to whoever made it (several clients may share one).</summary>
    public void Dispose() { }
}
