using System.CommandLine;
using Mola.Cli.Serving;
using Mola.Data;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;

namespace Mola.Cli.Commands;

public static class ServeCommand
{
    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption();
        var adapters = new Option<string[]>("--adapter")
        {
            Description = "An adapter to serve, as NAME=DIR (repeat for several; a request's \"model\" picks one by NAME, the base model by its directory's name)",
            AllowMultipleArgumentsPerToken = false,
        };
        var adapterTopK = Cli.AdapterTopKOption("; the adapters that record their own keep it");
        var host = new Option<string>("--host") { Description = "Address to listen on (127.0.0.1: this machine only)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0: any free port)", DefaultValueFactory = _ => 8000 };
        var apiKey = new Option<string?>("--api-key") { Description = "Require Authorization: Bearer KEY on every /v1 request (default: MOLA_API_KEY, else none)" };
        var template = new Option<string>("--template") { Description = "Template chat messages are rendered in: alpaca, or a JSON file (the adapter's training template)", DefaultValueFactory = _ => "alpaca" };
        var chatTemplate = new Option<string>("--chat-template")
        {
            Description = "How /v1/chat/completions renders messages: auto (the base model's chat_template in tokenizer_config.json " +
                "where it has one, else the training template), adapter (always the training template, --template), " +
                "or FILE (a Jinja chat template, or a JSON file holding \"chat_template\")",
            DefaultValueFactory = _ => "auto",
        };
        var maxBatch = new Option<int>("--max-batch") { Description = "Most requests decoding together", DefaultValueFactory = _ => 8 };
        var maxQueue = new Option<int>("--max-queue") { Description = "Most requests waiting for a batch slot; more are answered 429", DefaultValueFactory = _ => 64 };
        var maxBody = new Option<long>("--max-request-bytes") { Description = "Largest request body (413 past it)", DefaultValueFactory = _ => 1 << 20 };
        var timeout = new Option<double>("--timeout") { Description = "Seconds a request may take before it is cancelled (408)", DefaultValueFactory = _ => 300 };
        var dtype = Cli.DTypeOption();
        var device = Cli.DeviceOption();
        var cmd = new Command("serve", "Serve a base model and its MoLA/LoRA adapters over an OpenAI-compatible HTTP API " +
            "(/v1/completions, /v1/chat/completions, /v1/models, /health); concurrent requests decode together in one batch. " +
            "SIGTERM or Ctrl-C stops taking requests and lets those in flight finish (cancelled after 30 s).")
        { baseModel, adapters, adapterTopK, host, port, apiKey, template, chatTemplate, maxBatch, maxQueue, maxBody, timeout, dtype, device };
        cmd.SetAction(p => Cli.Run(p, null, o =>
        {
            var named = (p.GetValue(adapters) ?? []).Select(ParseAdapter).ToList();
            string dir = p.GetValue(baseModel)!;
            string baseName = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir)));
            var duplicate = named.Select(a => a.Name).Append(baseName).GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
            if (duplicate is not null)
                throw new MolaException($"--adapter {duplicate.Key}=...: the name is given twice (the base model is called \"{baseName}\")");
            if (p.GetValue(port) is < 0 or > 65535) throw new MolaException($"--port must be from 0 to 65535, got {p.GetValue(port)}");
            if (p.GetValue(maxBatch) < 1) throw new MolaException($"--max-batch must be 1 or more, got {p.GetValue(maxBatch)}");
            if (p.GetValue(maxQueue) < 1) throw new MolaException($"--max-queue must be 1 or more, got {p.GetValue(maxQueue)}");
            if (p.GetValue(maxBody) < 1) throw new MolaException($"--max-request-bytes must be 1 or more, got {p.GetValue(maxBody)}");
            if (!(p.GetValue(timeout) > 0 && p.GetValue(timeout) <= 86400)) throw new MolaException($"--timeout must be a number of seconds in (0, 86400], got {p.GetValue(timeout)}");
            var chat = ChatFormat(p.GetValue(chatTemplate)!, PromptTemplate.Load(p.GetValue(template)!), dir);
            foreach (var (name, adapterDir) in named)
                if (!Directory.Exists(adapterDir)) throw new MolaException($"--adapter {name}={adapterDir}: adapter directory not found");
                else Adapters.AdapterConfig.Load(adapterDir, p.GetValue(adapterTopK), topKWhereMissing: true);   // before the model loads
            if (p.GetValue(adapterTopK) is not null && named.Count == 0)
                throw new MolaException("--top-k: it is the top-k of an --adapter saved by the original MoLA code, and no --adapter is given");

            using var model = ModelLoader.Load(dir, Cli.DType(p, dtype), Cli.Device(p, device), o.Line);
            var tok = MolaTokenizer.Load(dir, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
            using var set = named.Count == 0 ? null : new AdapterSet(model, named, p.GetValue(adapterTopK));
            using var engine = new BatchEngine(model, tok, set, baseName, p.GetValue(maxBatch), p.GetValue(maxQueue));
            var options = new ServerOptions
            {
                Host = p.GetValue(host)!,
                Port = p.GetValue(port),
                ApiKey = p.GetValue(apiKey) ?? Environment.GetEnvironmentVariable("MOLA_API_KEY"),
                MaxRequestBytes = p.GetValue(maxBody),
                RequestTimeout = TimeSpan.FromSeconds(p.GetValue(timeout)),
            };
            var server = OpenAiServer.StartAsync(engine, chat, options, Console.Error).GetAwaiter().GetResult();
            o.Line($"serving {string.Join(", ", engine.ModelNames)} on {server.Url}; chat messages in {chat.Description}");
            server.WaitForShutdownAsync().GetAwaiter().GetResult();
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            o.Line("stopped");
            return null;
        }));
        return cmd;
    }

    /// <summary>--chat-template: auto, adapter or a file; checked (the Jinja parsed) before the model loads.</summary>
    static IChatFormat ChatFormat(string choice, PromptTemplate training, string modelDir) => choice switch
    {
        "adapter" => new TrainingChatFormat(training),
        "auto" => (IChatFormat?)ModelsTemplate(modelDir) ?? new TrainingChatFormat(training),
        _ when File.Exists(choice) => ChatTemplate.Load(choice, modelDir),
        _ => throw new MolaException($"--chat-template {choice}: expected auto, adapter or the path of a chat template file (not found)"),
    };

    static ChatTemplate? ModelsTemplate(string modelDir)
    {
        try { return ChatTemplate.FromModel(modelDir); }
        catch (MolaException e) { throw new MolaException($"{e.Message} (--chat-template adapter renders chat messages in the training template instead)"); }
    }

    static (string Name, string Directory) ParseAdapter(string spec)
    {
        int eq = spec.IndexOf('=');
        if (eq <= 0 || eq == spec.Length - 1)
            throw new MolaException($"--adapter {spec}: expected NAME=DIR (the name a request's \"model\" gives, and the adapter directory)");
        return (spec[..eq], spec[(eq + 1)..]);
    }
}
