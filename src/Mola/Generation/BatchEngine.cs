using System.Threading.Channels;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Generation;

/// <summary>One generation request: prompt ids (BOS first), the adapter (-1: the base model), decoding settings
/// (<see cref="GenerationOptions.MaxNewTokens"/>, greedy or sampling with its seed) and stop strings.</summary>
public sealed record EngineRequest
{
    public required List<int> PromptIds { get; init; }
    public int Adapter { get; init; } = -1;
    public required GenerationOptions Options { get; init; }
    public IReadOnlyList<string> Stop { get; init; } = [];
    public CancellationToken Cancellation { get; init; }
}

/// <summary>What a request produced: the text (cut before a stop string), its tokens, and why it ended:
/// <c>stop</c> (EOS or a stop string) or <c>length</c> (max tokens).</summary>
public sealed record EngineResult(string Text, IReadOnlyList<int> Tokens, int PromptTokens, string FinishReason);

/// <summary>A submitted request: its text as it is generated (<see cref="Deltas"/>) and its end (<see cref="Result"/>,
/// cancelled when the request's token is, faulted when decoding fails).</summary>
public sealed class EngineJob
{
    internal EngineJob(EngineRequest request)
    {
        Request = request;
        _deltas = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    }

    public EngineRequest Request { get; }
    readonly Channel<string> _deltas;
    readonly TaskCompletionSource<EngineResult> _result = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Pieces of text in order; complete when the request ends.</summary>
    public ChannelReader<string> Deltas => _deltas.Reader;
    public Task<EngineResult> Result => _result.Task;

    internal void Emit(string delta)
    {
        if (delta.Length > 0) _deltas.Writer.TryWrite(delta);
    }

    internal void Finish(EngineResult result)
    {
        _deltas.Writer.TryComplete();
        _result.TrySetResult(result);
    }

    internal void Fail(Exception error)
    {
        _deltas.Writer.TryComplete(error);
        if (error is OperationCanceledException) _result.TrySetCanceled();
        else _result.TrySetException(error);
    }
}

/// <summary>A request's decoding settings as the OpenAI API names them; null: the API's default.</summary>
public sealed record RequestSettings
{
    public int? MaxTokens { get; init; }
    public double? Temperature { get; init; }
    public double? TopP { get; init; }
    public long? Seed { get; init; }
    public IReadOnlyList<string> Stop { get; init; } = [];
}

/// <summary>The waiting queue is full (the server answers 429).</summary>
public sealed class EngineBusyException(string message) : Exception(message);

/// <summary>
/// Continuous batching for serving: one thread owns the model; requests wait in a bounded queue, join the running
/// batch at token boundaries and leave it when done. A joining request's prompt runs alone (batch 1, its own KV
/// cache: exactly the first step of <see cref="TextGenerator.Generate"/>); its cache is then left-padded to the
/// batch's length (or the batch's to its) and appended as a new row, with zeros in the attention mask over the
/// padding. Positions count real tokens only (<see cref="CausalLM.Context"/>), so a row's logits do not depend on its
/// neighbours: greedy output equals decoding it alone. Finished rows are removed from the cache, and padding columns no
/// row needs are dropped, so the batch never grows past its longest live row.
/// </summary>
public sealed class BatchEngine : IDisposable
{
    readonly CausalLM _model;
    readonly MolaTokenizer _tokenizer;
    readonly AdapterSet? _adapters;
    readonly Channel<EngineJob> _queue;
    readonly int _maxBatch;
    readonly Thread _thread;
    readonly CancellationTokenSource _stop = new();

    /// <param name="maxBatch">Most requests decoding together.</param>
    /// <param name="maxQueue">Most requests waiting to join; a request past it is refused (<see cref="EngineBusyException"/>).</param>
    /// <param name="baseModelName">The name that picks the base model alone (the adapters go by theirs).</param>
    public BatchEngine(CausalLM model, MolaTokenizer tokenizer, AdapterSet? adapters, string baseModelName = "base", int maxBatch = 8, int maxQueue = 64)
    {
        BaseModelName = baseModelName;
        if (maxBatch < 1) throw new MolaException($"the batch size must be 1 or more, got {maxBatch}");
        if (maxQueue < 1) throw new MolaException($"the queue size must be 1 or more, got {maxQueue}");
        _model = model;
        _tokenizer = tokenizer;
        _adapters = adapters;
        _maxBatch = maxBatch;
        _queue = Channel.CreateBounded<EngineJob>(new BoundedChannelOptions(maxQueue) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
        _thread = new Thread(Loop) { IsBackground = true, Name = "mola-engine" };
        _thread.Start();
    }

    public CausalLM Model => _model;
    public MolaTokenizer Tokenizer => _tokenizer;
    public IReadOnlyList<string> AdapterNames => _adapters?.Names ?? [];
    public string BaseModelName { get; }

    /// <summary>Every name a request's model may give: the base model's, then the adapters'.</summary>
    public IReadOnlyList<string> ModelNames => [BaseModelName, .. AdapterNames];

    /// <summary>The adapter index of a model name (-1: the base model).</summary>
    public int FindModel(string name)
    {
        if (name == BaseModelName) return -1;
        for (int i = 0; i < AdapterNames.Count; i++)
            if (AdapterNames[i] == name) return i;
        throw new InvalidRequestException("model", $"model \"{name}\" is not served here (served: {string.Join(", ", ModelNames)})");
    }

    /// <summary>Requests waiting and decoding now.</summary>
    public int Waiting => _queue.Reader.Count;
    public int Running => Volatile.Read(ref _running);
    int _running;

    /// <summary>
    /// An engine request for <paramref name="prompt"/> (encoded with BOS, as <c>mola generate --prompt</c> does) with
    /// OpenAI's parameters and defaults: temperature 1 (0 is greedy) in [0, 2], top_p in (0, 1], at most 4 stop
    /// strings, and max_tokens (default <paramref name="defaultMaxTokens"/>, or whatever positions are left) that
    /// with the prompt fits the model's positions. Bad values throw <see cref="InvalidRequestException"/>.
    /// </summary>
    public EngineRequest Prepare(string prompt, string promptParam, int adapter, RequestSettings settings, int? defaultMaxTokens, CancellationToken cancellation) =>
        Prepare(_tokenizer.Encode(prompt, bos: true), promptParam, adapter, settings, defaultMaxTokens, cancellation);

    /// <summary>The same for a prompt already encoded (a chat template writes its own BOS).</summary>
    public EngineRequest Prepare(List<int> ids, string promptParam, int adapter, RequestSettings settings, int? defaultMaxTokens, CancellationToken cancellation)
    {
        double temperature = settings.Temperature ?? 1.0, topP = settings.TopP ?? 1.0;
        if (!(temperature >= 0 && temperature <= 2))
            throw new InvalidRequestException("temperature", $"temperature must be a number from 0 to 2, got {Number(temperature)}");
        if (!((float)topP > 0 && topP <= 1))
            throw new InvalidRequestException("top_p", $"top_p must be a number in (0, 1], got {Number(topP)}");
        if (settings.Stop.Count > 4) throw new InvalidRequestException("stop", $"stop holds at most 4 strings, got {settings.Stop.Count}");
        if (settings.Stop.Any(s => s.Length == 0)) throw new InvalidRequestException("stop", "stop: a stop string is empty");
        int positions = _model.Config.MaxPositionEmbeddings;
        if (ids.Count >= positions)
            throw new InvalidRequestException(promptParam, $"the prompt is {ids.Count} tokens, which leaves none of the model's {positions} positions (max_position_embeddings) to generate");
        int maxTokens = settings.MaxTokens ?? Math.Min(defaultMaxTokens ?? int.MaxValue, positions - ids.Count);
        if (maxTokens < 1) throw new InvalidRequestException("max_tokens", $"max_tokens must be 1 or more, got {maxTokens}");
        if ((long)ids.Count + maxTokens > positions)
            throw new InvalidRequestException("max_tokens", $"the prompt's {ids.Count} tokens and max_tokens {maxTokens} come to {(long)ids.Count + maxTokens}, " +
                $"past the model's {positions} positions (max_position_embeddings); at most {positions - ids.Count} tokens fit");
        var options = new GenerationOptions
        {
            MaxNewTokens = maxTokens,
            Greedy = (float)temperature == 0,
            Temperature = temperature == 0 ? 1.0 : temperature,
            TopP = topP,
            Seed = settings.Seed ?? Random.Shared.NextInt64(),
        };
        return new EngineRequest { PromptIds = ids, Adapter = adapter, Options = options, Stop = settings.Stop, Cancellation = cancellation };
    }

    static string Number(double x) => x.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Queues a request; throws <see cref="EngineBusyException"/> when the queue is full.</summary>
    public EngineJob Submit(EngineRequest request)
    {
        request.Options.Validate();
        if (request.PromptIds.Count == 0) throw new MolaException("a prompt has no tokens (it needs at least BOS)");
        if (request.Adapter < -1 || request.Adapter >= AdapterNames.Count) throw new MolaException($"no adapter {request.Adapter}");
        var job = new EngineJob(request);
        if (_stop.IsCancellationRequested || !_queue.Writer.TryWrite(job))
            throw new EngineBusyException(_stop.IsCancellationRequested ? "the server is shutting down" : "too many requests are waiting; retry later");
        return job;
    }

    /// <summary>Stops taking requests, cancels those still running or waiting, and ends the engine's thread.</summary>
    public void Dispose()
    {
        if (_stop.IsCancellationRequested) return;
        _queue.Writer.TryComplete();
        _stop.Cancel();
        _thread.Join();
        while (_queue.Reader.TryRead(out var job)) job.Fail(new OperationCanceledException("the server is shutting down"));
        _stop.Dispose();
    }

    sealed class Row(EngineJob job)
    {
        public EngineJob Job { get; } = job;
        public List<int> Tokens { get; } = new();
        public long Next;
        public int Emitted;   // characters of the text already handed out
        public torch.Generator? Sampler;
        public string? Finish;
    }

    void Loop()
    {
        using var _ = no_grad();
        var rows = new List<Row>();
        KvCache? cache = null;
        Tensor? mask = null;   // [rows, cache length + 1]: the positions so far and the pending token of each row
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                if (rows.Count == 0 && !WaitForWork()) break;
                try
                {
                    while (rows.Count < _maxBatch && _queue.Reader.TryRead(out var job))
                    {
                        if (job.Request.Cancellation.IsCancellationRequested) { job.Fail(new OperationCanceledException()); continue; }
                        if (job.Request.Options.MaxNewTokens == 0) { job.Finish(new EngineResult("", [], job.Request.PromptIds.Count, "length")); continue; }
                        var row = Join(job, ref cache, ref mask);
                        rows.Add(row);
                        Advance(row);
                    }
                    Volatile.Write(ref _running, rows.Count);
                    Leave(rows, ref cache, ref mask);
                    if (rows.Count > 0) Step(rows, cache!, ref mask!);
                    Leave(rows, ref cache, ref mask);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // A failed step (an overflow, a libtorch error) ends the batch's requests with it; the engine goes on.
                    foreach (var r in rows) r.Job.Fail(e);
                    rows.Clear();
                    Reset(ref cache, ref mask);
                }
            }
        }
        finally
        {
            foreach (var r in rows)
            {
                r.Job.Fail(new OperationCanceledException("the server is shutting down"));
                r.Sampler?.Dispose();
            }
            Reset(ref cache, ref mask);
            Volatile.Write(ref _running, 0);
        }
    }

    bool WaitForWork()
    {
        try
        {
            return _queue.Reader.WaitToReadAsync(_stop.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    static void Reset(ref KvCache? cache, ref Tensor? mask)
    {
        cache?.Dispose();
        mask?.Dispose();
        cache = null;
        mask = null;
    }

    /// <summary>Runs the request's prompt alone and appends it to the batch as a new row, its next token pending.</summary>
    Row Join(EngineJob job, ref KvCache? cache, ref Tensor? mask)
    {
        var request = job.Request;
        var row = new Row(job);
        if (!request.Options.Greedy) row.Sampler = new torch.Generator((ulong)request.Options.Seed, _model.Device);
        using var scope = NewDisposeScope();
        KvCache? own = new KvCache(_model.Config.NumHiddenLayers);
        try
        {
            _adapters?.Assign([request.Adapter]);
            var ids = tensor(request.PromptIds.Select(t => (long)t).ToArray(), [1, request.PromptIds.Count], device: _model.Device);
            var logits = _model.Forward(ids, null, own);
            var joined = own;
            row.Next = Pick(logits.select(1, -1), row, 1);
            long T = request.PromptIds.Count;
            var ownMask = ones(1, T + 1, ScalarType.Int64, _model.Device);
            if (cache is null)
            {
                cache = joined;
                own = null;   // the batch's cache now
                mask = ownMask.DetachFromDisposeScope();
                return row;
            }
            long length = Math.Max(cache.Length, T);
            var padded = cat([nn.functional.pad(mask!, [length - cache.Length, 0]), nn.functional.pad(ownMask, [length - T, 0])], 0);
            cache.PadLeft(length);
            joined.PadLeft(length);
            cache.AppendRows(joined);
            mask!.Dispose();
            mask = padded.DetachFromDisposeScope();
            return row;
        }
        finally
        {
            own?.Dispose();
        }
    }

    /// <summary>One decoding step of every row: feeds each row's pending token, picks the next.</summary>
    void Step(List<Row> rows, KvCache cache, ref Tensor mask)
    {
        using var scope = NewDisposeScope();
        _adapters?.Assign(rows.Select(r => r.Job.Request.Adapter).ToList());
        var input = tensor(rows.Select(r => r.Next).ToArray(), [rows.Count, 1], device: _model.Device);
        var logits = _model.Forward(input, mask, cache).select(1, 0);   // [B, V]
        for (int b = 0; b < rows.Count; b++)
            if (rows[b].Finish is null) rows[b].Next = Pick(logits[b].unsqueeze(0), rows[b], rows[b].Tokens.Count + 1);
        var grown = nn.functional.pad(mask, [0, 1], value: 1).DetachFromDisposeScope();
        mask.Dispose();
        mask = grown;
        foreach (var r in rows) Advance(r);
    }

    /// <summary>The next token of one row from its last logits [1, V], as <see cref="TextGenerator.Generate"/> picks it.</summary>
    static long Pick(Tensor logits, Row row, int tokenNumber)
    {
        var last = logits.to(ScalarType.Float32);
        if (!torch.isfinite(last).all().item<bool>()) throw CausalLM.NotFinite($"the logits for generated token {tokenNumber} are");
        var options = row.Job.Request.Options;
        var next = options.Greedy ? last.argmax(-1) : TextGenerator.Sample(last, options, row.Sampler!);
        return next.cpu().item<long>();
    }

    /// <summary>Takes the row's pending token: EOS, max tokens, a stop string or cancellation end it; new text is handed out.</summary>
    void Advance(Row row)
    {
        if (row.Finish is not null) return;
        var request = row.Job.Request;
        if (request.Cancellation.IsCancellationRequested) { row.Finish = "cancelled"; return; }
        bool eos = row.Next == _tokenizer.EosId;
        if (!eos) row.Tokens.Add((int)row.Next);
        string text = _tokenizer.Decode(row.Tokens);
        // At EOS the text held back (a possible start of a stop string, an unfinished character) goes out too.
        int stopAt = eos ? -1 : StopIndex(text, request.Stop);
        if (eos || stopAt >= 0) row.Finish = "stop";
        else if (row.Tokens.Count >= request.Options.MaxNewTokens) row.Finish = "length";
        int end = stopAt >= 0 ? stopAt : row.Finish is not null ? text.Length : Settled(text, request.Stop);
        if (end > row.Emitted)
        {
            row.Job.Emit(text[row.Emitted..end]);
            row.Emitted = end;
        }
    }

    static int StopIndex(string text, IReadOnlyList<string> stop)
    {
        int at = -1;
        foreach (var s in stop)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (at < 0 || i < at)) at = i;
        }
        return at;
    }

    /// <summary>How much of the text can be handed out now: not a trailing partial character (a byte-fallback sequence
    /// still incomplete decodes as U+FFFD), nor a tail that may turn out to be the start of a stop string.</summary>
    static int Settled(string text, IReadOnlyList<string> stop)
    {
        int end = text.Length;
        while (end > 0 && text[end - 1] == '\uFFFD') end--;
        foreach (var s in stop)
            for (int k = Math.Min(s.Length - 1, end); k > 0; k--)
                if (string.CompareOrdinal(text, end - k, s, 0, k) == 0) { end -= k; break; }
        return end;
    }

    /// <summary>Finished rows leave the batch (their cache rows go, and the padding no remaining row needs).</summary>
    void Leave(List<Row> rows, ref KvCache? cache, ref Tensor? mask)
    {
        if (rows.All(r => r.Finish is null)) return;
        var keep = new List<long>();
        for (int b = 0; b < rows.Count; b++)
        {
            var r = rows[b];
            if (r.Finish is null) { keep.Add(b); continue; }
            r.Sampler?.Dispose();
            if (r.Finish == "cancelled") r.Job.Fail(new OperationCanceledException());
            else r.Job.Finish(new EngineResult(_tokenizer.Decode(r.Tokens)[..r.Emitted], r.Tokens, r.Job.Request.PromptIds.Count, r.Finish));
        }
        rows.RemoveAll(r => r.Finish is not null);
        Volatile.Write(ref _running, rows.Count);
        if (rows.Count == 0)
        {
            Reset(ref cache, ref mask);
            return;
        }
        using var scope = NewDisposeScope();
        var index = tensor(keep.ToArray(), device: mask!.device);
        cache!.KeepRows(keep.ToArray());
        var kept = mask.index_select(0, index);
        // Leading columns that are padding in every remaining row carry nothing.
        long firstUsed = kept.amax([0]).argmax().item<long>();
        long drop = Math.Min(firstUsed, cache.Length);
        cache.DropLeft(drop);
        var trimmed = kept.narrow(1, drop, kept.shape[1] - drop).contiguous().DetachFromDisposeScope();
        mask.Dispose();
        mask = trimmed;
    }
}
