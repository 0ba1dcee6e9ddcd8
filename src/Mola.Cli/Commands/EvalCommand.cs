using System.CommandLine;
using System.Text.Json;
using Mola.Adapters;
using Mola.Data;
using Mola.Evaluation;
using Mola.Models;
using Mola.Tokenization;
using Spectre.Console;

namespace Mola.Cli.Commands;

public static class EvalCommand
{
    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption();
        var adapter = Cli.AdapterOption();
        var adapterTopK = Cli.AdapterTopKOption();
        adapter.Description += " (omit to score the base model alone)";
        var data = new Option<string>("--data") { Description = "Benchmark records: JSON array or JSONL of {\"instruction\", \"input\", \"output\", \"answer\"}", Required = true };
        var task = new Option<string>("--task") { Description = $"One of {string.Join(", ", Benchmarks.Names)}", Required = true };
        var scoring = new Option<string>("--scoring")
        {
            Description = "generate (the paper's: decode after the template, read \"The answer is B.\"; unparseable counts wrong) " +
                "or likelihood (pick the option whose answer text is most probable; faster, never unparseable)",
            DefaultValueFactory = _ => "generate",
        };
        var batchSize = new Option<int>("--batch-size") { Description = "Records per batch", DefaultValueFactory = _ => 8 };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Most tokens generated per answer (generate scoring)", DefaultValueFactory = _ => 32 };
        var template = new Option<string>("--template") { Description = "Prompt template: alpaca, or a JSON file", DefaultValueFactory = _ => "alpaca" };
        var output = new Option<string?>("--output") { Description = "Write every record's prediction as JSONL to this file" };
        var dtype = Cli.DTypeOption();
        var device = Cli.DeviceOption();
        var json = Cli.JsonOption();
        var cmd = new Command("eval", "Benchmark accuracy on one of the paper's six tasks (ScienceQA, CommonsenseQA, OpenBookQA, MRPC, CoLA, RTE), " +
            "with per-class counts and, for the two-class tasks (MRPC, CoLA, RTE), Matthews correlation. See docs/BENCHMARKS.md for the record format.")
        { baseModel, adapter, adapterTopK, data, task, scoring, batchSize, maxNew, template, output, dtype, device, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            var bench = Benchmarks.Get(p.GetValue(task)!);
            var mode = Evaluator.ParseScoring(p.GetValue(scoring)!);
            var tmpl = PromptTemplate.Load(p.GetValue(template)!);
            string dataPath = p.GetValue(data)!;
            string? outPath = p.GetValue(output) is string op ? Cli.OutputFile(op, "--output", dataPath) : null;
            var records = InstructionRecord.Load(dataPath);
            foreach (var r in records) bench.GoldLabel(r.Answer, r.Output, $"{dataPath}:{r.Line}");   // bad gold labels fail before loading weights
            string dir = p.GetValue(baseModel)!;
            Cli.CheckAdapter(p.GetValue(adapter), p.GetValue(adapterTopK));
            using var model = ModelLoader.Load(dir, Cli.DType(p, dtype), Cli.Device(p, device), o.Line);
            if (p.GetValue(adapter) is string adapterDir) AdapterModel.LoadForInference(model, adapterDir, p.GetValue(adapterTopK));
            var tok = MolaTokenizer.Load(dir, model.Config.BosTokenId, model.Config.EosTokenId, model.Config.VocabSize);
            int extra = mode == Scoring.Generate ? p.GetValue(maxNew) : 0;
            var lengths = records.Select(r => tok.Encode(tmpl.Prompt(r.Instruction, r.Input), bos: true).Count + extra).ToList();
            var past = lengths.Where(n => n > model.Config.MaxPositionEmbeddings).ToList();
            if (past.Count > 0)
                Cli.WarnPastPositions(o, $"{past.Count} of {records.Count} records' prompts{(extra > 0 ? " with --max-new-tokens" : "")} come to up to", past.Max(), model.Config);
            var result = new ProgressReporter(o).Run($"eval {bench.Name}", records.Count,
                report => Evaluator.Run(model, tok, tmpl, bench, records, mode, p.GetValue(batchSize), p.GetValue(maxNew), n => report(n, "records")));
            var m = result.Metrics;
            if (outPath is not null) WritePredictions(outPath, records, result);
            WriteHuman(o, bench, m);
            return new
            {
                task = bench.Name,
                scoring = mode.ToString().ToLowerInvariant(),
                accuracy = m.Accuracy,
                n = m.N,
                correct = m.Correct,
                unparsed = m.Unparsed,
                per_class = m.PerClass.ToDictionary(c => c.Label, c => new { gold = c.Gold, predicted = c.Predicted, correct = c.Correct }),
                mcc = m.Mcc,
            };
        }));
        return cmd;
    }

    static void WritePredictions(string path, List<InstructionRecord> records, EvalResult result)
    {
        if (Path.GetDirectoryName(Path.GetFullPath(path)) is string d) Directory.CreateDirectory(d);
        using var w = new StreamWriter(path);
        foreach (var pr in result.Predictions)
        {
            var r = records[pr.Index];
            w.WriteLine(JsonSerializer.Serialize(new
            {
                index = pr.Index,
                line = r.Line,
                gold = pr.Gold,
                predicted = pr.Predicted,
                correct = pr.Correct,
                response = pr.Response,
                scores = pr.Scores,
            }, Cli.JsonOptions));
        }
    }

    static void WriteHuman(Output o, Benchmark bench, BenchmarkMetrics m)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(o.Human) });
        var table = new Table().AddColumn("label").AddColumn("gold").AddColumn("predicted").AddColumn("correct");
        foreach (var c in m.PerClass) table.AddRow(Markup.Escape(c.Label), c.Gold.ToString(), c.Predicted.ToString(), c.Correct.ToString());
        console.Write(table);
        o.Line($"{bench.DisplayName}: accuracy {m.Accuracy:P2} ({m.Correct}/{m.N}), unparsed {m.Unparsed}" + (m.Mcc is double mcc ? $", Matthews correlation {mcc:F4}" : ""));
    }
}
