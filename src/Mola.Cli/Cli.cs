using Mola.Adapters;
using System.CommandLine;
using System.Text.Encodings.Web;
using System.Text.Json;
using Mola.Platform;
using Mola;
using Mola.Cli.Commands;
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

    /// <summary>The whole command line: parses <paramref name="args"/> through every command and runs the one named
    /// (in-process, so the fuzz tests drive the real option tree).</summary>
    public static int Execute(string[] args)
    {
        var root = new RootCommand("mola: fine-tune LLaMA, Mistral and Gemma checkpoints with MoLA (MoE-LoRA with layer-wise expert allocation)");
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(PerplexityCommand.Create());
        root.Subcommands.Add(ParamsCommand.Create());
        root.Subcommands.Add(AllocateCommand.Create());
        root.Subcommands.Add(AnalyzeCommand.Create());
        root.Subcommands.Add(PruneCommand.Create());
        root.Subcommands.Add(ConvertAdapterCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(ExperimentCommand.Create());
        root.Subcommands.Add(DataCommand.Create());

        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // One line, like every other user error; --help shows the options.
            string command = parse.CommandResult.Command.Name == root.Name ? "mola" : "mola " + parse.CommandResult.Command.Name;
            if (!DistributedRun.OtherRank) Console.Error.WriteLine($"error: {string.Join("; ", parse.Errors.Select(e => OneLine(e.Message).TrimEnd('.')))} (see {command} --help)");
            return 1;
        }
        return parse.Invoke();
    }

    // System.CommandLine names the .NET type it could not parse ("as expected type 'System.Nullable`1[System.Double]'").
    static string OneLine(string s) => string.Join(' ', s.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        .Replace("as expected type 'System.Nullable`1[System.Double]'", "as a number")
        .Replace("as expected type 'System.Double'", "as a number")
        .Replace("as expected type 'System.Nullable`1[System.Int32]'", "as an integer")
        .Replace("as expected type 'System.Int32'", "as an integer")
        .Replace("as expected type 'System.Int64'", "as an integer")
        .Replace("as expected type 'System.Boolean'", "as true or false");

    public static Option<bool> JsonOption() => new("--json") { Description = "Print one JSON object as the last line of stdout; human output goes to stderr" };

    public static Option<string> BaseModelOption(bool required = true) => new("--base-model")
    {
        Description = "Base model directory in Hugging Face layout (config.json, model.safetensors or pytorch_model.bin or their shards, tokenizer.model or tokenizer.json)",
        Required = required,
    };

    public static Option<string?> AdapterOption() => new("--adapter")
    {
        Description = "Adapter directory to apply to the base model: mola's (adapter_config.json + adapter_model.safetensors), " +
            "a PEFT LoRA (safetensors or .bin), or a MoLA adapter saved by the original code (with --top-k)",
    };

    /// <summary>Reads the adapter's config before the base model loads, so that a wrong --adapter or --top-k fails at once.</summary>
    public static void CheckAdapter(string? adapterDir, string? topK)
    {
        if (adapterDir is null)
        {
            if (topK is not null) throw new MolaException("--top-k: it is the top-k of an --adapter saved by the original MoLA code, and no --adapter is given");
            return;
        }
        Adapters.AdapterConfig.Load(adapterDir, topK);
    }

    /// <summary>--top-k of an adapter saved by the original MoLA code (GCYZSL/MoLA), which records none.</summary>
    public static Option<string?> AdapterTopKOption(string? applies = null) => new("--top-k")
    {
        Description = "Experts per token, one value or one per layer (2 or 1,2,2), for a MoLA adapter saved by the original code " +
            "(GCYZSL/MoLA), which records none" + (applies ?? "; refused for an adapter that records its own"),
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
        if (string.IsNullOrWhiteSpace(path)) throw new MolaException($"{option}: empty (expected a file path)");
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

    /// <summary>The <c>--output</c> directory of a command that writes a new adapter from <paramref name="from"/>
    /// (<c>prune</c>, <c>convert-adapter</c>): not the input, not holding an adapter already.</summary>
    public static string NewAdapterDirectory(string from, string output, string what)
    {
        string to = OutputDirectory(output, "--output");
        if (Path.GetFullPath(from).TrimEnd('/') == Path.GetFullPath(to).TrimEnd('/'))
            throw new MolaException($"--output {to}: the same directory as --adapter (the {what} adapter goes to a new directory)");
        if (File.Exists(Path.Combine(to, AdapterFile.ConfigFile)) || File.Exists(Path.Combine(to, AdapterFile.WeightsFile)))
            throw new MolaException($"--output {to}: already holds an adapter (choose a new directory)");
        return to;
    }

    /// <summary>The option that sets a library setting (<see cref="MolaException.Render"/>): its key with dashes, but
    /// where the option's name differs from the key; a label that is an option already stays as it is.</summary>
    public static string OptionName(string key) => key.StartsWith("--", StringComparison.Ordinal) ? key
        : OptionNames.GetValueOrDefault(key) ?? "--" + key.Replace('_', '-');

    static readonly Dictionary<string, string> OptionNames = new()
    {
        ["lora_alpha"] = "--alpha",
        ["lora_dropout"] = "--dropout",
        ["num_experts"] = "--experts",
        ["target_modules"] = "--targets",
    };

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
            // One line whatever a message quotes (a file's text, a parser's excerpt).
            Console.Error.WriteLine($"error: {e.Render(OptionName).ReplaceLineEndings(" ")}");
            return 1;
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("MOLA_DEBUG") is null)
        {
            Console.Error.WriteLine($"error: {Unexpected(e)}");
            return 2;
        }
    }

    /// <summary>One line for an error the code did not foresee: the first line of the innermost useful message.
    /// libtorch's errors carry the C++ trace after their first line ("Exception raised from ...", "frame #0: ..."),
    /// which says nothing to a user; the full exception only with MOLA_DEBUG=1.</summary>
    public static string Unexpected(Exception e)
    {
        while (e is TypeInitializationException or AggregateException or System.Reflection.TargetInvocationException && e.InnerException is { } inner) e = inner;
        string first = e.Message.Split('\n', 2)[0].Trim();
        if (first.Length == 0) first = "an unexpected failure";
        string source = e is System.Runtime.InteropServices.ExternalException ? "libtorch: " : "";
        return $"{source}{first.TrimEnd('.')} (an unexpected failure; set MOLA_DEBUG=1 for the full trace)";
    }

    public static ScalarType DType(ParseResult p, Option<string> o) => TorchNames.ParseDType(p.GetValue(o)!);
    public static Device Device(ParseResult p, Option<string> o) => TorchNames.ParseDevice(p.GetValue(o)!);
}
