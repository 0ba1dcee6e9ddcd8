using System.CommandLine;
using Mola.Cli.Commands;

Mola.NativeEnvironment.Initialise();   // before anything loads libtorch

var root = new RootCommand("mola: fine-tune LLaMA, Mistral and Gemma checkpoints with MoLA (MoE-LoRA with layer-wise expert allocation)");
root.Subcommands.Add(TrainCommand.Create());
root.Subcommands.Add(GenerateCommand.Create());
root.Subcommands.Add(EvalCommand.Create());
root.Subcommands.Add(PerplexityCommand.Create());
root.Subcommands.Add(ParamsCommand.Create());
root.Subcommands.Add(AnalyzeCommand.Create());
root.Subcommands.Add(BenchCommand.Create());

var parse = root.Parse(args);
if (parse.Errors.Count > 0)
{
    // One line, like every other user error; --help shows the options.
    string command = string.Join(" ", parse.CommandResult.Command.Name == root.Name ? "mola" : "mola " + parse.CommandResult.Command.Name);
    Console.Error.WriteLine($"error: {string.Join("; ", parse.Errors.Select(e => e.Message.TrimEnd('.')))} (see {command} --help)");
    return 1;
}
return parse.Invoke();
