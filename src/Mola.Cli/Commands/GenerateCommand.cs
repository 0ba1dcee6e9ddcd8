using System.CommandLine;
using System.Diagnostics;
using Mola.Adapters;
using Mola.Data;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;

namespace Mola.Cli.Commands;

public static class GenerateCommand
{
    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption();
        var adapter = Cli.AdapterOption();
        var adapterTopK = Cli.AdapterTopKOption();
        var prompt = new Option<string?>("--prompt") { Description = "Raw text to continue (BOS is added)" };
        var instruction = new Option<string?>("--instruction") { Description = "An instruction, wrapped in --template; only the response is printed" };
        var input = new Option<string?>("--input") { Description = "Context for --instruction (the template's input)" };
        var template = new Option<string>("--template") { Description = "Template for --instruction: alpaca, or a JSON file", DefaultValueFactory = _ => "alpaca" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Most tokens to generate (stops earlier at EOS)", DefaultValueFactory = _ => 128 };
        var greedy = new Option<bool>("--greedy") { Description = "Argmax decoding (the default unless a sampling option is given)" };
        var temperature = new Option<double?>("--temperature") { Description = "Sample with this temperature, a positive finite number (implies sampling)" };
        var topP = new Option<double?>("--top-p") { Description = "Nucleus sampling: keep the smallest set of tokens reaching this probability, in (0, 1] (implies sampling)" };
        var topK = new Option<int?>("--top-k-sampling") { Description = "Sample from the k most likely tokens, k >= 0 (0: all; implies sampling)" };
        var truncate = new Option<bool>("--truncate-prompt")
        {
            Description = "Keep BOS and the prompt's last tokens so that prompt and --max-new-tokens fit the model's positions " +
                "(max_position_embeddings); without it a longer prompt is refused",
        };
        var seed = new Option<long>("--seed") { Description = "Seed for sampling", DefaultValueFactory = _ => 42 };
        var dtype = Cli.DTypeOption();
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption();
        var cmd = new Command("generate", "Generate text with a base model and an optional adapter (KV cache; greedy or sampling). " +
            "Give --prompt for raw text, or --instruction [--input] for the template's response.")
        { baseModel, adapter, adapterTopK, prompt, instruction, input, template, maxNew, greedy, temperature, topP, topK, truncate, seed, dtype, device, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string? rawPrompt = p.GetValue(prompt), instr = p.GetValue(instruction);
            if ((rawPrompt is null) == (instr is null)) throw new MolaException("give either --prompt TEXT or --instruction TEXT [--input TEXT]");
            if (p.GetValue(input) is not null && instr is null) throw new MolaException("--input goes with --instruction");
            bool sampling = p.GetValue(temperature) is not null || p.GetValue(topP) is not null || p.GetValue(topK) is not null;
            if (sampling && p.GetValue(greedy)) throw new MolaException("--greedy cannot be combined with --temperature, --top-p or --top-k-sampling");
            var options = new GenerationOptions
            {
                MaxNewTokens = p.GetValue(maxNew),
                Greedy = !sampling,
                Temperature = p.GetValue(temperature) ?? 1.0,
                TopP = p.GetValue(topP) ?? 1.0,
                TopK = p.GetValue(topK) ?? 0,
                Seed = p.GetValue(seed),
            };
            options.Validate();
            var tmpl = instr is null ? null : PromptTemplate.Load(p.GetValue(template)!);
            string dir = p.GetValue(baseModel)!;
            Cli.CheckAdapter(p.GetValue(adapter), p.GetValue(adapterTopK));
            using var model = ModelLoader.Load(dir, Cli.DType(p, dtype), Cli.Device(p, device), o.Line);
            if (p.GetValue(adapter) is string adapterDir) AdapterModel.LoadForInference(model, adapterDir, p.GetValue(adapterTopK));
            var tok = MolaTokenizer.Load(dir, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
            string text = tmpl is null ? rawPrompt! : tmpl.Prompt(instr!, p.GetValue(input));
            var ids = PromptIds(tok.Encode(text, bos: true), options.MaxNewTokens, model.Config.MaxPositionEmbeddings, p.GetValue(truncate));
            if (ids.Count + options.MaxNewTokens > model.Config.MaxPositionEmbeddings)
                Cli.WarnPastPositions(o, "the prompt with --max-new-tokens comes to", ids.Count + options.MaxNewTokens, model.Config);
            var clock = Stopwatch.StartNew();
            var generated = TextGenerator.Generate(model, [ids], options, tok.EosId)[0];
            double seconds = clock.Elapsed.TotalSeconds;
            string output = tok.Decode(generated);
            if (tmpl is not null) output = output.Trim();
            o.Line(output);
            double tps = generated.Count / Math.Max(seconds, 1e-9);
            if (o.Json) o.Line($"[{generated.Count} tokens in {seconds:F2} s, {tps:F1} tokens/s]");
            return new { ids = ids.Concat(generated), text = output, tokens_per_second = tps, new_tokens = generated.Count };
        }));
        return cmd;
    }

    /// <summary>The prompt's ids, refused when they alone pass the model's positions (attention memory grows with
    /// the square of the length: a long prompt ends in the kernel's out-of-memory kill, not in an answer), or with
    /// <paramref name="truncate"/> BOS and the last tokens, leaving room for <paramref name="maxNew"/> where it can.</summary>
    static List<int> PromptIds(List<int> ids, int maxNew, int positions, bool truncate)
    {
        if (ids.Count <= positions) return ids;
        if (!truncate)
            throw new MolaException($"the prompt is {ids.Count} tokens, past the model's {positions} positions (max_position_embeddings); " +
                "shorten it, or give --truncate-prompt to keep its last tokens");
        int keep = Math.Max(2, positions - maxNew);
        return [ids[0], .. ids.GetRange(ids.Count - (keep - 1), keep - 1)];
    }
}
