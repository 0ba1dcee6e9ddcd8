using System.CommandLine;
using System.Text.Encodings.Web;
using System.Text.Json;
using Mola;
using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Cli;

/// <summary>What every command shares: common options, error handling and the JSON/human split
/// (with --json the last stdout line is one JSON object and human output goes to stderr).</summary>
public static class Cli
{
    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DictionaryKeyPolicy = null,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    public static Option<bool> JsonOption() => new("--json") { Description = "Print one JSON object as the last line of stdout; human output goes to stderr" };

    public static Option<string> BaseModelOption(bool required = true) => new("--base-model")
    {
        Description = "Base model directory in Hugging Face layout (config.json, model.safetensors or shards, tokenizer.model or tokenizer.json)",
        Required = required,
    };

    public static Option<string?> AdapterOption() => new("--adapter")
    {
        Description = "Adapter directory (adapter_config.json + adapter_model.safetensors) to apply to the base model",
    };

    public static Option<string> DTypeOption(string defaultValue = "float32") => new("--dtype")
    {
        Description = "Dtype of the frozen base weights: float32, bfloat16 or float16",
        DefaultValueFactory = _ => defaultValue,
    };

    public static Option<string> DeviceOption() => new("--device")
    {
        Description = "cpu or cuda (cuda needs a CUDA build of libtorch)",
        DefaultValueFactory = _ => "cpu",
    };

    /// <summary>A warning line when sequences go past the positions the model was trained on (they run, as in
    /// Hugging Face, but what comes out there is unreliable and memory grows with the square of the length).</summary>
    public static void WarnPastPositions(Output o, string subject, int longest, ModelConfig config) =>
        o.Line($"warning: {subject} {longest} tokens, past the model's {config.MaxPositionEmbeddings} positions " +
            "(max_position_embeddings): results there are unreliable");

    /// <summary>Checks an output file before any work: not a directory, and not one of the command's inputs.</summary>
    public static string OutputFile(string path, string option, params string[] inputs)
    {
        if (Directory.Exists(path)) throw new MolaException($"{option} {path}: is a directory (expected a file path)");
        string full = Path.GetFullPath(path);
        if (inputs.Any(i => Path.GetFullPath(i) == full)) throw new MolaException($"{option} {path}: is also an input of this command; writing it would destroy it");
        return path;
    }

    /// <summary>Checks an output directory before any work: not an existing file.</summary>
    public static string OutputDirectory(string path, string option)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new MolaException($"{option}: empty (expected a directory path)");
        if (File.Exists(path)) throw new MolaException($"{option} {path}: is a file (expected a directory)");
        return path;
    }

    /// <summary>Runs a command body: user errors become one line on stderr and exit code 1, never a stack trace.</summary>
    public static int Run(ParseResult parse, Option<bool>? json, Func<Output, object?> body)
    {
        var output = new Output(json is not null && parse.GetValue(json));
        try
        {
            var result = body(output);
            if (result is not null) output.Result(result);
            return 0;
        }
        catch (MolaException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("MOLA_DEBUG") is null)
        {
            var inner = e is TypeInitializationException { InnerException: { } ie } ? ie : e;
            Console.Error.WriteLine($"error: {inner.GetType().Name}: {inner.Message} (set MOLA_DEBUG=1 for the stack trace)");
            return 2;
        }
    }

    public static ScalarType DType(ParseResult p, Option<string> o) => TorchOptions.ParseDType(p.GetValue(o)!);
    public static Device Device(ParseResult p, Option<string> o) => TorchOptions.ParseDevice(p.GetValue(o)!);
}

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
