using System.CommandLine;
using Mola.Adapters;
using Mola.Evaluation;
using Mola.Models;
using Mola.Tokenization;

namespace Mola.Cli.Commands;

public static class PerplexityCommand
{
    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption();
        var data = new Option<string>("--data") { Description = "JSONL file, one {\"text\": ...} object a line", Required = true };
        var batchSize = new Option<int>("--batch-size") { Description = "Texts per forward pass", DefaultValueFactory = _ => 8 };
        var adapter = Cli.AdapterOption();
        var adapterTopK = Cli.AdapterTopKOption();
        var dtype = Cli.DTypeOption();
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption();
        var cmd = new Command("perplexity", "Mean NLL per token and perplexity of a model over a JSONL of {\"text\": ...}. " +
            "Each text is BOS + its tokens and every token after BOS is predicted.")
        { baseModel, adapter, adapterTopK, data, batchSize, dtype, device, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            var texts = Perplexity.ReadTexts(p.GetValue(data)!);
            string dir = p.GetValue(baseModel)!;
            Cli.CheckAdapter(p.GetValue(adapter), p.GetValue(adapterTopK));
            using var model = ModelLoader.Load(dir, Cli.DType(p, dtype), Cli.Device(p, device), o.Line);
            if (p.GetValue(adapter) is string adapterDir) AdapterModel.LoadForInference(model, adapterDir, p.GetValue(adapterTopK));
            var tok = MolaTokenizer.Load(dir, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
            var r = Perplexity.Compute(model, tok, texts, p.GetValue(batchSize));
            o.Line($"texts {r.Texts}  tokens {r.Tokens}  nll {r.Nll:F6}  perplexity {r.Perplexity:F4}");
            return new { nll = r.Nll, perplexity = r.Perplexity, tokens = r.Tokens, texts = r.Texts };
        }));
        return cmd;
    }
}
