using System.Diagnostics;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Mola.Data;
using Mola.Generation;

namespace Mola.Cli.Serving;

public sealed record ServerOptions
{
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0: a free port chosen by the system (tests).</summary>
    public int Port { get; init; } = 8000;
    /// <summary>When set, every /v1 request needs <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }
    public long MaxRequestBytes { get; init; } = 1 << 20;
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>How long SIGTERM waits for requests in flight before cancelling them.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>An error answered in OpenAI's shape: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
sealed class ApiError(int status, string message, string? param = null, string? code = null, string type = "invalid_request_error") : Exception(message)
{
    public int Status { get; } = status;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public string Type { get; } = type;
}

/// <summary>
/// The OpenAI-compatible HTTP layer over a <see cref="BatchEngine"/>: <c>POST /v1/completions</c>,
/// <c>POST /v1/chat/completions</c> (server-sent events with <c>stream</c>), <c>GET /v1/models</c>, <c>GET /health</c>.
/// Every request is checked before it reaches the engine; every failure is a JSON error, never a stack trace; one log
/// line per request.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly BatchEngine _engine;
    readonly IChatFormat _chat;
    readonly ServerOptions _options;
    readonly TextWriter _log;
    readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    OpenAiServer(BatchEngine engine, IChatFormat chat, ServerOptions options, TextWriter log)
    {
        _engine = engine;
        _chat = chat;
        _options = options;
        _log = log;
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();   // our own line per request instead
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = options.ShutdownTimeout);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.MaxRequestBytes;
            k.Limits.MaxRequestHeadersTotalSize = 32 * 1024;
        });
        builder.WebHost.UseUrls($"http://{(options.Host.Contains(':') ? $"[{options.Host}]" : options.Host)}:{options.Port}");
        _app = builder.Build();
        _app.MapGet("/health", Handle(Health));
        _app.MapGet("/v1/models", Handle(Models));
        _app.MapPost("/v1/completions", Handle(ctx => Generate(ctx, chat: false)));
        _app.MapPost("/v1/chat/completions", Handle(ctx => Generate(ctx, chat: true)));
        _app.MapFallback(Handle(ctx => throw new ApiError(404, $"no endpoint {ctx.Request.Method} {ctx.Request.Path}", code: "not_found")));
    }

    /// <summary>Starts listening; <see cref="Url"/> then says where (the port the system chose for port 0).</summary>
    public static async Task<OpenAiServer> StartAsync(BatchEngine engine, IChatFormat chat, ServerOptions options, TextWriter log)
    {
        var server = new OpenAiServer(engine, chat, options, log);
        try
        {
            await server._app.StartAsync();
        }
        catch (IOException e)
        {
            await server._app.DisposeAsync();
            throw new MolaException($"--host {options.Host} --port {options.Port}: cannot listen there ({e.Message.TrimEnd('.')})");
        }
        return server;
    }

    public string Url => _app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>()
        .Features.Get<IServerAddressesFeature>()!.Addresses.First();

    /// <summary>Until SIGTERM or Ctrl-C; the host then stops taking connections and waits for requests in flight.</summary>
    public Task WaitForShutdownAsync() => _app.WaitForShutdownAsync();

    public Task StopAsync() => _app.StopAsync();

    public ValueTask DisposeAsync() => _app.DisposeAsync();

    /// <summary>What a request's log line reports beyond method, path, status and time.</summary>
    sealed class RequestInfo
    {
        public string Model = "-";
        public int PromptTokens, CompletionTokens;
        public string? Note;
        public CancellationTokenSource? Timeout;
    }

    const string Disconnected = "client disconnected";

    RequestDelegate Handle(Func<HttpContext, Task> body) => async ctx =>
    {
        var clock = Stopwatch.StartNew();
        var info = new RequestInfo();
        ctx.Items[typeof(RequestInfo)] = info;
        try
        {
            if (_options.ApiKey is { } key && ctx.Request.Path.StartsWithSegments("/v1") &&
                ctx.Request.Headers.Authorization.ToString() != "Bearer " + key)
                throw new ApiError(401, "missing or wrong API key: send the header Authorization: Bearer KEY", code: "invalid_api_key");
            await body(ctx);
        }
        catch (Exception e)
        {
            await Fail(ctx, info, e);
        }
        finally
        {
            // 499 (nginx's "client closed request"): the client left before its answer was complete.
            int status = info.Note == Disconnected ? 499 : ctx.Response.StatusCode;
            lock (_log)
                _log.WriteLine($"{DateTimeOffset.UtcNow:yyyy-MM-ddTHH:mm:ss.fffZ} {ctx.Request.Method} {ctx.Request.Path} {status} model={info.Model} " +
                    $"prompt_tokens={info.PromptTokens} completion_tokens={info.CompletionTokens} {clock.Elapsed.TotalMilliseconds:F0}ms{(info.Note is null ? "" : " " + info.Note)}");
        }
    };

    async Task Fail(HttpContext ctx, RequestInfo info, Exception e)
    {
        var error = e switch
        {
            ApiError a => a,
            InvalidRequestException r when r.Param == "model" => new ApiError(404, r.Message, r.Param, "model_not_found"),
            InvalidRequestException r => new ApiError(400, r.Message, r.Param),
            EngineBusyException b => new ApiError(429, b.Message, code: "rate_limit_exceeded", type: "rate_limit_error"),
            BadHttpRequestException { StatusCode: 413 } => new ApiError(413, $"the request body is larger than {_options.MaxRequestBytes} bytes", code: "request_too_large"),
            BadHttpRequestException b => new ApiError(b.StatusCode, Cli.Unexpected(b)),
            OperationCanceledException when ctx.RequestAborted.IsCancellationRequested => null,   // the client went away: nobody to answer
            OperationCanceledException when info.Timeout?.IsCancellationRequested != true =>
                new ApiError(503, "the server is shutting down", code: "shutting_down", type: "server_error"),
            OperationCanceledException => new ApiError(408, $"the request took longer than {_options.RequestTimeout.TotalSeconds:F0} s (the server's --timeout)", code: "timeout", type: "timeout_error"),
            MolaException m => new ApiError(500, m.Message.ReplaceLineEndings(" "), type: "server_error"),
            _ => new ApiError(500, Cli.Unexpected(e), type: "server_error"),
        };
        if (error is null)
        {
            info.Note = Disconnected;
            return;
        }
        info.Note = error.Code ?? error.Type;
        var payload = new { error = new { message = error.Message, type = error.Type, param = error.Param, code = error.Code } };
        try
        {
            if (ctx.Response.HasStarted)
            {
                // Mid-stream: the status is sent already, so the error goes as one last event.
                await ctx.Response.WriteAsync($"data: {JsonSerializer.Serialize(payload)}\n\n");
                return;
            }
            ctx.Response.StatusCode = error.Status;
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(payload));
        }
        catch (Exception) when (ctx.RequestAborted.IsCancellationRequested)
        {
            info.Note = Disconnected;
        }
    }

    Task Health(HttpContext ctx) =>
        ctx.Response.WriteAsJsonAsync(new { status = "ok", running = _engine.Running, waiting = _engine.Waiting });

    Task Models(HttpContext ctx) =>
        ctx.Response.WriteAsJsonAsync(new
        {
            @object = "list",
            data = _engine.ModelNames.Select(n => new { id = n, @object = "model", created = _created, owned_by = "mola" }),
        });

    async Task Generate(HttpContext ctx, bool chat)
    {
        var info = (RequestInfo)ctx.Items[typeof(RequestInfo)]!;
        var body = await ReadBody(ctx);
        var r = OpenAiRequest.Parse(body, chat);
        info.Model = r.Model ?? _engine.BaseModelName;
        int adapter = _engine.FindModel(info.Model);
        var prompt = chat ? _chat.Encode(_engine.Tokenizer, r.Messages!) : _engine.Tokenizer.Encode(r.Prompt!, bos: true);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted);
        timeout.CancelAfter(_options.RequestTimeout);
        info.Timeout = timeout;
        // OpenAI's default for completions is 16 tokens; chat runs to the end of the model's positions.
        var request = _engine.Prepare(prompt, chat ? "messages" : "prompt", adapter, r.Settings, chat ? null : 16, timeout.Token);
        info.PromptTokens = request.PromptIds.Count;
        var job = _engine.Submit(request);
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N")[..24];
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (r.Stream)
        {
            await Stream(ctx, job, info, r, id, created, chat, timeout.Token);
            return;
        }
        var result = await job.Result.WaitAsync(timeout.Token);
        info.CompletionTokens = result.Tokens.Count;
        object choice = chat
            ? new { index = 0, message = new { role = "assistant", content = result.Text }, logprobs = (object?)null, finish_reason = result.FinishReason }
            : new { index = 0, text = result.Text, logprobs = (object?)null, finish_reason = result.FinishReason };
        await ctx.Response.WriteAsJsonAsync(new
        {
            id,
            @object = chat ? "chat.completion" : "text_completion",
            created,
            model = info.Model,
            choices = new[] { choice },
            usage = Usage(result),
        }, timeout.Token);
    }

    static object Usage(EngineResult r) => new { prompt_tokens = r.PromptTokens, completion_tokens = r.Tokens.Count, total_tokens = r.PromptTokens + r.Tokens.Count };

    /// <summary>Server-sent events as the OpenAI API streams: one chunk per piece of text, a last chunk with the finish
    /// reason, the usage chunk when <c>stream_options.include_usage</c> asks for it, then <c>data: [DONE]</c>.</summary>
    static async Task Stream(HttpContext ctx, EngineJob job, RequestInfo info, OpenAiRequest r, string id, long created, bool chat, CancellationToken token)
    {
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        string kind = chat ? "chat.completion.chunk" : "text_completion";
        async Task Send(object choice, object? usage = null, bool noChoice = false)
        {
            var chunk = new { id, @object = kind, created, model = info.Model, choices = noChoice ? Array.Empty<object>() : new[] { choice }, usage };
            await ctx.Response.WriteAsync($"data: {JsonSerializer.Serialize(chunk)}\n\n", token);
            await ctx.Response.Body.FlushAsync(token);
        }
        object Piece(string text, string? finish) => chat
            ? new { index = 0, delta = finish is null ? new { role = (string?)"assistant", content = (string?)text } : new { role = (string?)null, content = (string?)null }, logprobs = (object?)null, finish_reason = finish }
            : new { index = 0, text, logprobs = (object?)null, finish_reason = finish };
        await ctx.Response.StartAsync(token);
        if (chat) await Send(Piece("", null));
        await foreach (var delta in job.Deltas.ReadAllAsync(token))
        {
            info.CompletionTokens++;   // pieces until the result gives the exact count
            await Send(Piece(delta, null));
        }
        var result = await job.Result.WaitAsync(token);
        info.CompletionTokens = result.Tokens.Count;
        await Send(Piece("", result.FinishReason));
        if (r.IncludeUsage) await Send(null!, Usage(result), noChoice: true);
        await ctx.Response.WriteAsync("data: [DONE]\n\n", token);
    }

    async Task<JsonElement> ReadBody(HttpContext ctx)
    {
        if (ctx.Request.ContentLength > _options.MaxRequestBytes)
            throw new ApiError(413, $"the request body is larger than {_options.MaxRequestBytes} bytes", code: "request_too_large");
        try
        {
            using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, new JsonDocumentOptions { MaxDepth = 16 }, ctx.RequestAborted);
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new ApiError(400, $"the request body is not valid JSON ({e.Message.Split('.')[0]})");
        }
    }
}
