using System.CommandLine;
using Mola.Data;

namespace Mola.Cli.Commands;

public static class DataCommand
{
    public static Command Create()
    {
        var task = new Argument<string>("dataset") { Description = $"The data set: {string.Join(", ", PublicDatasets.Names)}" };
        var inputs = new Option<string[]>("--input")
        {
            Description = "A file as downloaded: the Hugging Face hub's Parquet, JSON or JSON Lines, or the original release's " +
                "(ScienceQA's problems.json and pid_splits.json, CommonsenseQA's and OpenBookQA's JSON Lines, GLUE's .tsv / msr_paraphrase_*.txt); " +
                "told apart by content. Several files (shards, a shell glob) follow one --input or repeat it",
            Required = true,
            AllowMultipleArgumentsPerToken = true,
        };
        var output = new Option<string>("--output")
        {
            Description = "Where the records go: a .json file (a JSON array) or .jsonl (JSON Lines); with --split-by, a directory",
            Required = true,
        };
        var splitBy = new Option<string?>("--split-by") { Description = "Write one file per value of this column (topic: ScienceQA's continual-learning sequence), named VALUE.json" };
        var split = new Option<string?>("--split")
        {
            Description = "The split to take from a file that holds them all: ScienceQA's problems.json (train, val, test; with its " +
                "pid_splits.json as another --input, any list it has, in its order)",
        };
        var json = Cli.JsonOption();
        var cmd = new Command("data", "Convert a public benchmark data set (ScienceQA, CommonsenseQA, OpenBookQA, GLUE MRPC/CoLA/RTE) " +
            "as the Hugging Face hub ships it or as its authors released it into mola's records, by docs/BENCHMARKS.md's rules, keeping its descriptive columns (ScienceQA's subject, topic, ...)")
        { task, inputs, output, split, splitBy, json };
        cmd.SetAction(p => Cli.Run(p, json, o =>
        {
            string name = p.GetValue(task)!;
            var (records, skipped) = PublicDatasets.Convert(name, p.GetValue(inputs)!, p.GetValue(split));
            if (records.Count == 0) throw new MolaException($"--input: no records ({skipped} rows left out by the rules: ScienceQA's questions with an image, hidden test labels)");
            string target = p.GetValue(output)!;
            var files = new Dictionary<string, int>();
            if (p.GetValue(splitBy) is { } column)
            {
                if (File.Exists(target)) throw new MolaException($"--output {target}: with --split-by, --output is a directory, and this is a file");
                foreach (var (value, group) in RecordFile.SplitBy(records, column))
                {
                    string file = Path.Combine(target, RecordFile.FileName(value) + ".json");
                    if (files.ContainsKey(file)) throw new MolaException($"--split-by {column}: two values make the file name {file}");
                    RecordFile.Write(file, group);
                    files[file] = group.Count;
                }
            }
            else
            {
                RecordFile.Write(target, records);
                files[target] = records.Count;
            }
            foreach (var (file, count) in files) o.Line($"{file}: {count} records");
            o.Line($"{records.Count} records written, {skipped} rows left out");
            return new { records = records.Count, skipped, files };
        }));
        return cmd;
    }
}
