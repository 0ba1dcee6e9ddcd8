using System.ClientModel;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Mola.Cli.Serving;
using Mola.Data;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;
using OpenAI;
using OpenAI.Chat;
using Xunit;
using Xunit.Abstractions;

namespace Mola.Tests;

/// <summary>A server on the loopback address (a port the system picks) over llama-tiny with room for the Alpaca
/// prompt (512 positions), serving the MoLA fixture as "mola"; shared by the tests of <see cref="ServeTests"/>.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public string ModelDir { get; } = TestUtil.CopyFixture("llama-tiny");
    public static readonly string Mola = TestUtil.Fixture("llama-tiny-mola");
    public CausalLM Model { get; private set; } = null!;
    public MolaTokenizer Tokenizer { get; private set; } = null!;
    public BatchEngine Engine { get; private set; } = null!;
    public OpenAiServer Server { get; private set; } = null!;
    public StringWriter Log { get; } = new();
    AdapterSet _set = null!;
    public string BaseName => Engine.BaseModelName;

    public async Task InitializeAsync()
    {
        string config = Path.Combine(ModelDir, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 512"));
        Model = ModelLoader.Load(ModelDir);
        Tokenizer = MolaTokenizer.Load(ModelDir);
        _set = new AdapterSet(Model, [("mola", Mola)]);
        Engine = new BatchEngine(Model, Tokenizer, _set, Path.GetFileName(ModelDir), maxBatch: 8, maxQueue: 64);
        Server = await OpenAiServer.StartAsync(Engine, new TrainingChatFormat(PromptTemplate.Alpaca), new ServerOptions { Port = 0, MaxRequestBytes = 64 * 1024 }, Log);
    }

    public async Task DisposeAsync()
    {
        await Server.StopAsync();
        await Server.DisposeAsync();
        Engine.Dispose();
        _set.Dispose();
        Model.Dispose();
    }

    public ChatClient Chat(string model) =>
        new(model, new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(Server.Url + "/v1") });
}

public class ServeTests(ServerFixture f, ITestOutputHelper output) : IClassFixture<ServerFixture>
{
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(60) };

    Task<(HttpStatusCode Status, JsonElement Body)> Post(string path, string json) => PostTo(f.Server.Url, path, json);

    [Fact]
    public async Task ChatWithTheOpenAiClientEqualsMolaGenerate()
    {
        var r = CliRunner.Run("generate", "--base-model", f.ModelDir, "--adapter", ServerFixture.Mola, "--instruction", "Name a rock.", "--max-new-tokens", "12", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        var j = r.LastJson();
        int newTokens = j.GetProperty("new_tokens").GetInt32(), allIds = j.GetProperty("ids").GetArrayLength();

        var chat = await f.Chat("mola").CompleteChatAsync([new UserChatMessage("Name a rock.")], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 12 });
        var c = chat.Value;
        // generate --instruction trims the response it prints; the server sends the text as generated.
        Assert.Equal(j.GetProperty("text").GetString(), c.Content[0].Text.Trim());
        Assert.Equal(newTokens, c.Usage.OutputTokenCount);
        Assert.Equal(allIds - newTokens, c.Usage.InputTokenCount);
        Assert.Equal(allIds, c.Usage.TotalTokenCount);
        Assert.Equal(newTokens == 12 ? ChatFinishReason.Length : ChatFinishReason.Stop, c.FinishReason);
        Assert.Equal("mola", c.Model);

        // Streaming: the pieces add up to the same text; the usage comes in the last chunk.
        var pieces = new StringBuilder();
        ChatTokenUsage? usage = null;
        await foreach (var u in f.Chat("mola").CompleteChatStreamingAsync([new UserChatMessage("Name a rock.")], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 12 }))
        {
            foreach (var part in u.ContentUpdate) pieces.Append(part.Text);
            usage ??= u.Usage;
        }
        Assert.Equal(c.Content[0].Text, pieces.ToString());
        Assert.Equal(newTokens, usage?.OutputTokenCount);
    }

    [Fact]
    public async Task CompletionsEqualMolaGenerateAndTheModelPicksTheAdapter()
    {
        var r = CliRunner.Run("generate", "--base-model", f.ModelDir, "--prompt", "the cell energy", "--max-new-tokens", "9", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        var (status, body) = await Post("/v1/completions", $$"""{"model": "{{f.BaseName}}", "prompt": "the cell energy", "max_tokens": 9, "temperature": 0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        var choice = body.GetProperty("choices")[0];
        Assert.Equal(r.LastJson().GetProperty("text").GetString(), choice.GetProperty("text").GetString());
        Assert.Equal(r.LastJson().GetProperty("new_tokens").GetInt32(), body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(r.LastJson().GetProperty("ids").GetArrayLength() - r.LastJson().GetProperty("new_tokens").GetInt32(),
            body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        var withAdapter = CliRunner.Run("generate", "--base-model", f.ModelDir, "--adapter", ServerFixture.Mola, "--prompt", "the cell energy", "--max-new-tokens", "9", "--json");
        var (_, adapted) = await Post("/v1/completions", """{"model": "mola", "prompt": ["the cell energy"], "max_tokens": 9, "temperature": 0, "stream": false}""");
        Assert.Equal(withAdapter.LastJson().GetProperty("text").GetString(), adapted.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.NotEqual(choice.GetProperty("text").GetString(), adapted.GetProperty("choices")[0].GetProperty("text").GetString());

        var models = new OpenAI.Models.OpenAIModelClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(f.Server.Url + "/v1") });
        Assert.Equal([f.BaseName, "mola"], (await models.GetModelsAsync()).Value.Select(m => m.Id));
    }

    [Fact]
    public async Task StreamedCompletionsAreServerSentEvents()
    {
        var (_, whole) = await Post("/v1/completions", """{"model": "mola", "prompt": "a river", "max_tokens": 10, "temperature": 0}""");
        using var response = await Http.PostAsync(f.Server.Url + "/v1/completions",
            new StringContent("""{"model": "mola", "prompt": "a river", "max_tokens": 10, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}""", Encoding.UTF8, "application/json"));
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("data: [DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement).ToList();
        string text = string.Concat(chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0).Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.Equal(whole.GetProperty("choices")[0].GetProperty("text").GetString(), text);
        Assert.Equal(whole.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    public static TheoryData<string, string, int, string?> BadRequests => new()
    {
        { "/v1/completions", """{"model": "mola", "prompt": "a", """, 400, null },                         // malformed JSON
        { "/v1/completions", """[1, 2]""", 400, "body" },
        { "/v1/completions", """{"model": "mola", "prompt": "a", "temperature": "hot"}""", 400, "temperature" },
        { "/v1/completions", """{"model": "mola", "prompt": "a", "max_tokens": 1e20}""", 400, "max_tokens" },
        { "/v1/completions", """{"model": "mola", "prompt": "a", "max_tokens": 100000}""", 400, "max_tokens" },   // past the positions
        { "/v1/completions", """{"model": "mola", "prompt": "a", "temperature": 3}""", 400, "temperature" },
        { "/v1/completions", """{"model": "mola", "prompt": "a", "n": 2}""", 400, "n" },
        { "/v1/completions", """{"model": "mola", "prompt": 5}""", 400, "prompt" },
        { "/v1/completions", """{"model": "mola"}""", 400, "prompt" },
        { "/v1/completions", """{"model": "gpt-4", "prompt": "a"}""", 404, "model" },
        { "/v1/completions", """{"model": 3, "prompt": "a"}""", 400, "model" },
        { "/v1/chat/completions", """{"model": "mola", "messages": "hi"}""", 400, "messages" },
        { "/v1/chat/completions", """{"model": "mola", "messages": [{"role": "robot", "content": "hi"}]}""", 400, "messages[0].role" },
        { "/v1/chat/completions", """{"model": "mola", "messages": [{"role": "user", "content": 7}]}""", 400, "messages[0].content" },
        { "/v1/chat/completions", """{"model": "mola", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}""", 400, "stop[0]" },
        { "/v1/chat/completions", """{"model": "mola", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}""", 400, "stream" },
        { "/v1/nothing", "{}", 404, null },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task BadRequestsGetAnOpenAiErrorAndTheServerKeepsServing(string path, string json, int status, string? param)
    {
        var (code, body) = await Post(path, json);
        Assert.Equal(status, (int)code);
        var error = body.GetProperty("error");
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()));
        Assert.DoesNotContain("   at ", error.GetProperty("message").GetString());
        Assert.Equal(JsonValueKind.String, error.GetProperty("type").ValueKind);
        Assert.Equal(param, error.GetProperty("param").ValueKind == JsonValueKind.Null ? null : error.GetProperty("param").GetString());
        await AssertServing();
    }

    async Task AssertServing()
    {
        var (ok, after) = await Post("/v1/completions", """{"model": "mola", "prompt": "a", "max_tokens": 2, "temperature": 0}""");
        Assert.Equal(HttpStatusCode.OK, ok);
        Assert.InRange(after.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), 0, 2);
    }

    [Fact]
    public async Task AnOversizedBodyIs413AndAClientLeavingMidStreamIsCancelled()
    {
        string big = $$"""{"model": "mola", "prompt": "{{new string('a', 100_000)}}"}""";   // the fixture's limit is 64 KB
        var (code, body) = await Post("/v1/completions", big);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, code);
        Assert.Contains("65536 bytes", body.GetProperty("error").GetProperty("message").GetString());

        // A server whose EOS is never generated (-1), so the stream surely outlives the client.
        using var model = ModelLoader.Load(f.ModelDir);
        using var engine = new BatchEngine(model, MolaTokenizer.Load(f.ModelDir, eosId: -1), null, "base");
        var log = new StringWriter();
        await using var server = await OpenAiServer.StartAsync(engine, new TrainingChatFormat(PromptTemplate.Alpaca), new ServerOptions { Port = 0 }, log);
        using (var request = new HttpRequestMessage(HttpMethod.Post, server.Url + "/v1/completions")
        { Content = new StringContent("""{"prompt": "a", "max_tokens": 500, "temperature": 0, "stream": true}""", Encoding.UTF8, "application/json") })
        // No drain: HttpClient would otherwise read the rest of the response to reuse the connection.
        using (var leaving = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }))
        using (var response = await leaving.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            using var stream = await response.Content.ReadAsStreamAsync();
            var first = new byte[16];
            Assert.True(await stream.ReadAsync(first) > 0);
        }   // the connection closes here, mid-stream
        var clock = Stopwatch.StartNew();
        string Log() { lock (log) return log.ToString(); }
        while (!Log().Contains(" 499 ") && clock.Elapsed < TimeSpan.FromSeconds(20)) await Task.Delay(20);
        Assert.True(Log().Contains("client disconnected"), Log());
        // The row left the batch instead of decoding 500 tokens for nobody.
        var line = Log().Split('\n').First(l => l.Contains(" 499 "));
        // The response is logged when the request ends; the engine lets go of its row at its next token boundary.
        clock.Restart();
        while (engine.Running > 0 && clock.Elapsed < TimeSpan.FromSeconds(20)) await Task.Delay(20);
        Assert.Equal(0, engine.Running);
        Assert.True(int.Parse(line.Split("completion_tokens=")[1].Split(' ')[0]) < 500, line);
        using var ok = await Http.PostAsync(server.Url + "/v1/completions", new StringContent("""{"prompt": "a", "max_tokens": 3}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        await server.StopAsync();

        // A request past --timeout: 408, and the engine drops its row. 1 ms is shorter than the 500 decoding steps
        // the request asks for on any machine (200 ms was not: a quiet machine decodes this tiny model faster).
        await using var hasty = await OpenAiServer.StartAsync(engine, new TrainingChatFormat(PromptTemplate.Alpaca), new ServerOptions { Port = 0, RequestTimeout = TimeSpan.FromMilliseconds(1) }, TextWriter.Null);
        using var slow = await Http.PostAsync(hasty.Url + "/v1/completions", new StringContent("""{"prompt": "a", "max_tokens": 500}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.RequestTimeout, slow.StatusCode);
        using (var doc = JsonDocument.Parse(await slow.Content.ReadAsStringAsync()))
            Assert.Equal("timeout", doc.RootElement.GetProperty("error").GetProperty("code").GetString());
        clock.Restart();
        while (engine.Running > 0 && clock.Elapsed < TimeSpan.FromSeconds(20)) await Task.Delay(20);
        Assert.Equal(0, engine.Running);
        await hasty.StopAsync();
    }

    [Fact]
    public async Task ThirtyTwoConcurrentClientsAllGetTheirAloneAnswers()
    {
        const int clients = 32, perClient = 2, maxTokens = 12;
        string Prompt(int i) => $"the {(i % 5 == 0 ? "cell" : i % 5 == 1 ? "river" : i % 5 == 2 ? "stone" : i % 5 == 3 ? "plant" : "light")} {new string('x', i % 7)}";
        string Model(int i) => i % 2 == 0 ? "mola" : f.BaseName;
        string Json(int i) => $$"""{"model": "{{Model(i)}}", "prompt": "{{Prompt(i)}}", "max_tokens": {{maxTokens}}, "temperature": 0}""";
        // Independent answers: TextGenerator alone, on a model of its own, per distinct request.
        var want = new Dictionary<int, string>();
        using (var alone = ModelLoader.Load(f.ModelDir))
        using (var withAdapter = ModelLoader.Load(f.ModelDir))
        {
            Mola.Adapters.AdapterModel.Load(withAdapter, ServerFixture.Mola).eval();
            for (int i = 0; i < 10; i++)
                want[i] = f.Tokenizer.Decode(TextGenerator.Generate(i % 2 == 0 ? withAdapter : alone, [f.Tokenizer.Encode(Prompt(i), bos: true)],
                    new GenerationOptions { MaxNewTokens = maxTokens }, f.Tokenizer.EosId)[0]);
        }
        async Task<string> Ask(int i)
        {
            var (code, body) = await Post("/v1/completions", Json(i));
            Assert.Equal(HttpStatusCode.OK, code);
            return body.GetProperty("choices")[0].GetProperty("text").GetString()!;
        }

        var clock = Stopwatch.StartNew();
        for (int i = 0; i < clients * perClient; i++) Assert.Equal(want[i % 10], await Ask(i % 10));
        double oneAtATime = clock.Elapsed.TotalSeconds;
        clock.Restart();
        await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
        {
            for (int k = 0; k < perClient; k++)
            {
                int i = (c * perClient + k) % 10;
                Assert.Equal(want[i], await Ask(i));
            }
        }));
        double batched = clock.Elapsed.TotalSeconds;
        int n = clients * perClient;
        output.WriteLine($"serve load: {n} requests of {maxTokens} tokens, one at a time {n / oneAtATime:F1} req/s, " +
            $"{clients} clients (batch up to 8) {n / batched:F1} req/s: {oneAtATime / batched:F2}x");
    }

    [Fact]
    public async Task AnApiKeyIsRequiredWhenSetAndAFullQueueIs429()
    {
        // A model of its own with positions to spare, EOS never generated (-1): the first request (100,000 tokens)
        // cannot finish while the test runs, so the queue is surely full when the third arrives; it ends by going away.
        string dir = TestUtil.CopyFixture("llama-tiny");
        string config = Path.Combine(dir, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 200000"));
        using var model = ModelLoader.Load(dir);
        using var engine = new BatchEngine(model, MolaTokenizer.Load(dir, eosId: -1), null, "base", maxBatch: 1, maxQueue: 1);
        await using var server = await OpenAiServer.StartAsync(engine, new TrainingChatFormat(PromptTemplate.Alpaca), new ServerOptions { Port = 0, ApiKey = "sesame" }, TextWriter.Null);
        HttpRequestMessage Request(string? key, int maxTokens = 5, bool stream = false)
        {
            string json = $$"""{"prompt": "the cell", "max_tokens": {{maxTokens}}, "temperature": 0, "stream": {{(stream ? "true" : "false")}}}""";
            var m = new HttpRequestMessage(HttpMethod.Post, server.Url + "/v1/completions") { Content = new StringContent(json, Encoding.UTF8, "application/json") };
            if (key is not null) m.Headers.Authorization = new("Bearer", key);
            return m;
        }
        using (var denied = await Http.SendAsync(Request(null)))
            Assert.Equal(HttpStatusCode.Unauthorized, denied.StatusCode);
        using (var wrong = await Http.SendAsync(Request("open")))
            Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
        using (var health = await Http.GetAsync(server.Url + "/health"))
            Assert.Equal(HttpStatusCode.OK, health.StatusCode);

        static async Task Until(Func<bool> condition)
        {
            var clock = Stopwatch.StartNew();
            while (!condition())
            {
                Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), "the engine never got there");
                await Task.Delay(5);
            }
        }
        // One decoding, one waiting: the next is refused with 429 and a JSON error.
        var first = await Http.SendAsync(Request("sesame", 100_000, stream: true), HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        await Until(() => engine.Running == 1);
        var second = Http.SendAsync(Request("sesame"));
        await Until(() => engine.Waiting == 1);
        using (var refused = await Http.SendAsync(Request("sesame")))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
            using var doc = JsonDocument.Parse(await refused.Content.ReadAsStringAsync());
            Assert.Equal("rate_limit_exceeded", doc.RootElement.GetProperty("error").GetProperty("code").GetString());
        }
        first.Dispose();   // the client goes away: its request is cancelled at the next token, and the waiting one runs
        using (var waited = await second)
            Assert.Equal(HttpStatusCode.OK, waited.StatusCode);
        using var after = await Http.SendAsync(Request("sesame"));
        Assert.Equal(HttpStatusCode.OK, after.StatusCode);
        await server.StopAsync();
    }

    [Fact]
    public async Task TheInProcessChatClientEqualsTheServer()
    {
        Microsoft.Extensions.AI.IChatClient client = new MolaChatClient(f.Engine, PromptTemplate.Alpaca);
        var options = new Microsoft.Extensions.AI.ChatOptions { ModelId = "mola", Temperature = 0, MaxOutputTokens = 10 };
        Microsoft.Extensions.AI.ChatMessage[] messages = [new(Microsoft.Extensions.AI.ChatRole.User, "Name a rock.")];
        var response = await client.GetResponseAsync(messages, options);
        var tokens = OneAlone(PromptTemplate.Alpaca.Prompt("Name a rock."), 10);
        Assert.Equal(f.Tokenizer.Decode(tokens), response.Text);
        Assert.Equal(tokens.Count, response.Usage?.OutputTokenCount);
        var streamed = new StringBuilder();
        await foreach (var u in client.GetStreamingResponseAsync(messages, options)) streamed.Append(u.Text);
        Assert.Equal(response.Text, streamed.ToString());
        await Assert.ThrowsAsync<InvalidRequestException>(() => client.GetResponseAsync(messages, new Microsoft.Extensions.AI.ChatOptions { ModelId = "gpt-4" }));
    }

    [Fact]
    public async Task ChatInTheModelsChatTemplateEqualsGeneratingFromItsRenderedPrompt()
    {
        // Mistral-Instruct's template, as its tokenizer_config.json holds it (the one generate.py renders with Jinja2).
        using var cases = JsonDocument.Parse(File.ReadAllText(TestUtil.Fixture("chat-templates", "cases.json")));
        string file = Path.Combine(TestUtil.TempDir(), "tokenizer_config.json");
        File.WriteAllText(file, JsonSerializer.Serialize(new
        {
            chat_template = cases.RootElement.GetProperty("templates").GetProperty("mistral-instruct-v0.1").GetString(),
            bos_token = "<s>",
            eos_token = "</s>",
        }));
        var template = ChatTemplate.Load(file, null);
        await using var server = await OpenAiServer.StartAsync(f.Engine, template, new ServerOptions { Port = 0 }, TextWriter.Null);
        List<int> prompt = [f.Tokenizer.BosId, .. f.Tokenizer.Encode("[INST] Name a rock. [/INST]")];
        var tokens = OneAlone(prompt, 10);

        var (status, body) = await PostTo(server.Url, "/v1/chat/completions",
            """{"model": "mola", "messages": [{"role": "user", "content": "Name a rock."}], "max_tokens": 10, "temperature": 0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(f.Tokenizer.Decode(tokens), body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
        Assert.Equal(prompt.Count, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        // The template's raise_exception is the client's error: 400 with its message.
        var (refused, error) = await PostTo(server.Url, "/v1/chat/completions", """{"messages": [{"role": "system", "content": "x"}]}""");
        Assert.Equal(HttpStatusCode.BadRequest, refused);
        Assert.EndsWith("refused them: Conversation roles must alternate user/assistant/user/assistant/...", error.GetProperty("error").GetProperty("message").GetString());

        Microsoft.Extensions.AI.IChatClient client = new MolaChatClient(f.Engine, template);
        var inProcess = await client.GetResponseAsync([new(Microsoft.Extensions.AI.ChatRole.User, "Name a rock.")],
            new Microsoft.Extensions.AI.ChatOptions { ModelId = "mola", Temperature = 0, MaxOutputTokens = 10 });
        Assert.Equal(f.Tokenizer.Decode(tokens), inProcess.Text);
        await server.StopAsync();
    }

    static async Task<(HttpStatusCode Status, JsonElement Body)> PostTo(string url, string path, string json)
    {
        using var response = await Http.PostAsync(url + path, new StringContent(json, Encoding.UTF8, "application/json"));
        using var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        return (response.StatusCode, doc.RootElement.Clone());
    }

    /// <summary>Greedy tokens of <paramref name="text"/> with the MoLA adapter, from TextGenerator on a model of its own.</summary>
    List<int> OneAlone(string text, int maxTokens) => OneAlone(f.Tokenizer.Encode(text, bos: true), maxTokens);

    List<int> OneAlone(List<int> prompt, int maxTokens)
    {
        using var model = ModelLoader.Load(f.ModelDir);
        Mola.Adapters.AdapterModel.Load(model, ServerFixture.Mola).eval();
        return TextGenerator.Generate(model, [prompt], new GenerationOptions { MaxNewTokens = maxTokens }, f.Tokenizer.EosId)[0];
    }

    [Fact]
    public async Task SigtermLetsTheRequestInFlightFinishAndExitsCleanly()
    {
        int port;
        using (var probe = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        string url = $"http://127.0.0.1:{port}";
        Task<HttpResponseMessage>? inFlight = null;
        var r = CliRunner.RunAndSignal(["serve", "--base-model", f.ModelDir, "--adapter", "mola=" + ServerFixture.Mola, "--port", port.ToString()], () =>
        {
            if (inFlight is null)
            {
                try
                {
                    using var health = Http.GetAsync(url + "/health").GetAwaiter().GetResult();
                    if (health.StatusCode != HttpStatusCode.OK) return false;
                }
                catch (HttpRequestException)
                {
                    return false;   // not listening yet
                }
                var request = new HttpRequestMessage(HttpMethod.Post, url + "/v1/completions")
                { Content = new StringContent("""{"model": "mola", "prompt": "a", "max_tokens": 200, "temperature": 0, "stream": true}""", Encoding.UTF8, "application/json") };
                inFlight = Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            }
            return inFlight.IsCompleted;   // its headers are in: the request is being served
        }, "TERM", TimeSpan.FromSeconds(60));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.NotNull(inFlight);
        using var response = await inFlight;
        string body = await response.Content.ReadAsStringAsync();
        Assert.EndsWith("data: [DONE]\n\n", body);
        Assert.Contains("POST /v1/completions 200 model=mola", r.Stderr);
        Assert.Contains("stopped", r.Stderr + r.Stdout);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void AModelsChatTemplateOutsideTheSubsetStopsServeBeforeTheModelLoads()
    {
        string dir = TestUtil.CopyFixture("llama-tiny");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": "{% macro m() %}{% endmacro %}"}""");
        var r = CliRunner.Run("serve", "--base-model", dir);
        Assert.Equal($"{Path.Combine(dir, "tokenizer_config.json")}: chat_template line 1: {{% macro %}} is outside the supported Jinja subset " +
            "(supported: for, if, elif, else, set) (--chat-template adapter renders chat messages in the training template instead)", r.SingleErrorLine());
    }

    [Theory]
    [InlineData("--adapter", "mola", "expected NAME=DIR")]
    [InlineData("--adapter", "mola=/nonexistent", "adapter directory not found")]
    [InlineData("--port", "70000", "--port must be from 0 to 65535")]
    [InlineData("--max-batch", "0", "--max-batch must be 1 or more")]
    [InlineData("--timeout", "-1", "--timeout must be")]
    [InlineData("--chat-template", "/nonexistent/chat.jinja", "--chat-template /nonexistent/chat.jinja: expected auto, adapter or the path of a chat template file (not found)")]
    public void BadServeOptionsAreOneLineBeforeTheModelLoads(string option, string value, string message)
    {
        var r = CliRunner.Run("serve", "--base-model", f.ModelDir, option, value);
        Assert.Contains(message, r.SingleErrorLine());
    }
}
