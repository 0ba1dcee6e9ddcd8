using System.CommandLine;
using Mola.Cli.Commands;

var root = new RootCommand("mola: fine-tune LLaMA, Mistral and Gemma checkpoints with MoLA (MoE-LoRA with layer-wise expert allocation)");
root.Subcommands.Add(TrainCommand.Create());
root.Subcommands.Add(PerplexityCommand.Create());
root.Subcommands.Add(ParamsCommand.Create());
root.Subcommands.Add(AnalyzeCommand.Create());
root.Subcommands.Add(BenchCommand.Create());
return root.Parse(args).Invoke();
