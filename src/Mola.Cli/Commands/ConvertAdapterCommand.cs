using System.CommandLine;
using Mola.Adapters;

namespace Mola.Cli.Commands;

public static class ConvertAdapterCommand
{
    public static Command Create()
    {
        var adapter = new Option<string>("--adapter") { Description = "Adapter directory to convert: a PEFT LoRA (adapter_model.safetensors or .bin), an original-MoLA adapter_model.bin, or mola's own (left unchanged)", Required = true };
        var output = new Option<string>("--output") { Description = "Directory for the adapter in mola's format (must not hold an adapter yet)", Required = true };
        var topK = Cli.AdapterTopKOption();
        var json = Cli.JsonOption();
        var cmd = new Command("convert-adapter", "Write an adapter from another tool (a PEFT LoRA, or a MoLA adapter of the original code with --top-k) in mola's format: adapter_config.json with one rank per layer " +
            "and adapter_model.safetensors (float32), PEFT's per-module scaling (use_rslora, alpha_pattern) folded into lora_B. " +
            "Needs no base model; every command that takes --adapter also reads the original directly.")
        { adapter, output, topK, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string from = p.GetValue(adapter)!, to = Cli.NewAdapterDirectory(from, p.GetValue(output)!, "converted");
            var config = AdapterFile.Convert(from, to, p.GetValue(topK));
            string kind = config.Kind == AdapterKind.Mola ? "MoLA" : "LoRA";
            o.Line($"{kind} adapter, {config.NumLayers} layers, r {ExpertAllocation.Describe(config.Rank)}, lora_alpha {config.LoraAlpha}; wrote {to}");
            return new { kind = kind.ToUpperInvariant(), layers = config.NumLayers, r = config.Rank, lora_alpha = config.LoraAlpha, output = to };
        }));
        return cmd;
    }
}
