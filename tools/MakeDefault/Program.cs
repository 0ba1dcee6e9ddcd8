using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using MakeDefault;
using Mola.Platform;
using Mola.Models;
using Mola.Tokenization;

// Makes the embedded default of `mola train`: assets/default-model (a small pretrained LLaMA) and
// assets/default-task (a multiple-choice task it has never seen). See assets/README.md.
const string Usage = """
    usage: dotnet run --project tools/MakeDefault -- COMMAND [--assets DIR] [options]
      all          task, then pretrain (the whole regeneration)
      task         writes DIR/default-task/{train,test}.jsonl and template.json (KeywordTask: the shipped task)
      study-tasks  writes DIR/study-tasks/{group-of-word,plant-or-animal}/ (StudyTasks.cs: the embedded default study of mola experiment)
                   [--lengths-only: only print the token lengths of the files there]
      group-task   writes the earlier, harder "same group" task (DefaultTask) instead
      pretrain     pretrains the model and writes DIR/default-model    [--steps N --batch N --lr X --seed N]
      stats        token lengths of the task records and of pretraining documents
      experiment   trains a MoLA adapter on the task and prints accuracy before and after
                   [--steps N --batch N --lr X --rank N --experts 2468 --top-k N --train-on-inputs --eval-items N --kind mola|lora]
    DIR defaults to assets/ in the repository.
    """;

var (command, opts) = ParseArgs(args);
string root = FindRepositoryRoot();
string assets = opts.TryGetValue("assets", out var a) ? a : Path.Combine(root, "assets");
string tokenizerSource = Path.Combine(root, "tests", "Mola.Tests", "Fixtures", "tokenizer", "tokenizer.model");
const int TaskSeed = 2024, TrainRecords = 2000, TestRecords = 200;
Native.Initialise();
if (opts.ContainsKey("threads")) TorchSharp.torch.set_num_threads(Int("threads", 2));

switch (command)
{
    case "all":
        KeywordTask.Write(assets, TaskSeed, 1200, TestRecords);
        Pretrain();
        break;
    case "task":
        KeywordTask.Write(assets, TaskSeed, 1200, TestRecords);
        break;
    case "study-tasks":
        if (!opts.ContainsKey("lengths-only")) StudyTasks.Write(assets, TaskSeed, 800, 96, 192);
        StudyTaskLengths();
        break;
    case "group-task":
        WriteTask();
        break;
    case "pretrain":
        Pretrain();
        break;
    case "stats":
        Stats();
        break;
    case "probe":
        {
            Native.Initialise();
            using var model = ModelLoader.Load(Path.Combine(assets, "default-model"));
            var tok = MolaTokenizer.Load(Path.Combine(assets, "default-model"), 1, 2);
            var rnd = new Random(99);
            foreach (var (name, kind) in new[] { ("energy or matter", 4), ("number in list", 6) })
                Console.WriteLine($"{name}: {Experiment.Accuracy(model, tok, Enumerable.Range(0, 100).Select(_ => PretrainingCorpus.OtherTask(rnd, kind)).ToList()):P0}");
            var (_, test) = DefaultTask.Split(TaskSeed, TrainRecords, TestRecords);
            Console.WriteLine($"default task (before training): {Experiment.Accuracy(model, tok, test):P1}");
            break;
        }
    case "gradcheck":
        {
            using var model = ModelLoader.Load(Path.Combine(assets, "default-model"));
            foreach (var p in model.parameters()) p.requires_grad = true;
            model.train();
            var tok = MolaTokenizer.Load(Path.Combine(assets, "default-model"), 1, 2);
            var rnd = new Random(3);
            var docs = Enumerable.Range(0, 4).Select(_ => tok.Encode(PretrainingCorpus.Next(rnd).Text, bos: true)).ToList();
            using var batch = Mola.Data.Batching.PadRight(docs, 0, TorchSharp.torch.CPU);
            var loss = Losses.CausalLm(model.Forward(batch.InputIds, batch.AttentionMask), batch.Labels);
            loss.backward();
            foreach (var (name, p) in model.named_parameters())
                if (name.Contains("layers.0.") || name.Contains("layers.3.")) Console.WriteLine($"{name}: |w| {p.norm().item<float>():F3} |grad| {(p.grad is null ? -1 : p.grad.norm().item<float>()):E2}");
            break;
        }
    case "tokenloss":
        {
            using var model = ModelLoader.Load(Path.Combine(assets, "default-model"));
            var tok = MolaTokenizer.Load(Path.Combine(assets, "default-model"), 1, 2);
            var rnd = new Random(Int("seed", 5));
            for (int i = 0; i < Int("docs", 4); i++)
            {
                using var scope = TorchSharp.torch.NewDisposeScope();
                var ids = tok.Encode(PretrainingCorpus.Next(rnd).Text, bos: true, eos: true);
                var input = TorchSharp.torch.tensor(ids.Select(x => (long)x).ToArray()).unsqueeze(0);
                var logp = TorchSharp.torch.nn.functional.log_softmax(model.Forward(input)[0], -1);
                var sb = new System.Text.StringBuilder();
                for (int t = 1; t < ids.Count; t++)
                    sb.Append($"{tok.Decode([ids[t]]).Replace("\n", "\\n")}[{-logp[t - 1, ids[t]].item<float>():F1}] ");
                Console.WriteLine(sb + "\n");
            }
            break;
        }
    case "experiment":
        Experiment.Run(assets, new ExperimentOptions
        {
            Steps = Int("steps", 60),
            BatchSize = Int("batch", 16),
            LearningRate = Dbl("lr", 3e-3),
            WarmupSteps = Int("warmup", 6),
            Rank = Int("rank", 8),
            Experts = opts.GetValueOrDefault("experts", "2468"),
            TopK = Int("top-k", 2),
            TrainOnInputs = opts.ContainsKey("train-on-inputs"),
            EvalItems = Int("eval-items", 200),
            Kind = opts.GetValueOrDefault("kind", "mola"),
            Seed = Int("seed", 42),
        }, Console.Out);
        break;
    default:
        Console.Error.WriteLine(Usage);
        return 2;
}
return 0;

void WriteTask()
{
    var (train, test) = DefaultTask.Split(TaskSeed, TrainRecords, TestRecords);
    string dir = Path.Combine(assets, "default-task");
    Directory.CreateDirectory(dir);
    WriteJsonl(Path.Combine(dir, "train.jsonl"), train);
    WriteJsonl(Path.Combine(dir, "test.jsonl"), test);
    Console.WriteLine($"wrote {train.Count} train and {test.Count} test records to {dir}");
}

void Pretrain()
{
    var tok = MolaTokenizer.Load(tokenizerSource, 1, 2);
    Native.Initialise();
    var o = new PretrainOptions { Steps = Int("steps", 3000), BatchSize = Int("batch", 8), LearningRate = Dbl("lr", 3e-3), Seed = Int("seed", 1234) };
    string dir = Path.Combine(assets, "default-model");
    void Save(CausalLM m)
    {
        Pretraining.Save(m, dir);
        File.Copy(tokenizerSource, Path.Combine(dir, "tokenizer.model"), overwrite: true);
        Console.WriteLine($"wrote {dir}");
    }
    using var model = Pretraining.Train(o, tok, Console.Out, Save);
    Save(model);
}

void Stats()
{
    var tok = MolaTokenizer.Load(tokenizerSource, 1, 2);
    var (train, test) = DefaultTask.Split(TaskSeed, TrainRecords, TestRecords);
    var lengths = train.Concat(test).Select(r => tok.Encode(Alpaca.Prompt(r.Instruction, r.Input) + r.Output, bos: true, eos: true).Count).ToList();
    Console.WriteLine($"task records: tokens min {lengths.Min()} mean {lengths.Average():F1} max {lengths.Max()}");
    var rnd = new Random(1);
    var docs = Enumerable.Range(0, 2000).Select(_ => tok.Encode(PretrainingCorpus.Next(rnd).Text, bos: true, eos: true).Count).ToList();
    Console.WriteLine($"pretraining documents: tokens min {docs.Min()} mean {docs.Average():F1} max {docs.Max()}");
    rnd = new Random(2);
    for (int i = 0; i < 6; i++) Console.WriteLine("---\n" + PretrainingCorpus.Next(rnd).Text);
    Console.WriteLine("---\n" + PretrainingCorpus.Render(train[0]));
}

// Training time is tokens: the mean prompt + response length of each study task's train records.
void StudyTaskLengths()
{
    var tok = MolaTokenizer.Load(tokenizerSource, 1, 2);
    foreach (var dir in Directory.GetDirectories(Path.Combine(assets, "study-tasks")).Order())
    {
        var template = Mola.Data.PromptTemplate.Load(Path.Combine(dir, "template.json"));
        var lengths = Mola.Data.InstructionRecord.Load(Path.Combine(dir, "train.jsonl"))
            .Select(r => tok.Encode(template.Prompt(r.Instruction, r.Input) + r.Output, bos: true, eos: true).Count).ToList();
        Console.WriteLine($"{Path.GetFileName(dir)}: train records of {lengths.Min()}-{lengths.Max()} tokens, mean {lengths.Average():F1}");
    }
}

void WriteJsonl(string path, IEnumerable<TaskRecord> records)
{
    using var w = new StreamWriter(path) { NewLine = "\n" };
    foreach (var r in records)
        w.WriteLine(new JsonObject { ["instruction"] = r.Instruction, ["input"] = r.Input, ["output"] = r.Output, ["answer"] = r.Answer }.ToJsonString());
}

int Int(string key, int fallback) => opts.TryGetValue(key, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
double Dbl(string key, double fallback) => opts.TryGetValue(key, out var v) ? double.Parse(v, CultureInfo.InvariantCulture) : fallback;

static (string Command, Dictionary<string, string> Options) ParseArgs(string[] args)
{
    var options = new Dictionary<string, string>();
    string command = args.Length > 0 ? args[0] : "";
    for (int i = 1; i < args.Length; i++)
    {
        if (!args[i].StartsWith("--")) throw new ArgumentException($"unexpected argument \"{args[i]}\"");
        string key = args[i][2..];
        bool hasValue = i + 1 < args.Length && !args[i + 1].StartsWith("--");
        options[key] = hasValue ? args[++i] : "true";
    }
    return (command, options);
}

static string FindRepositoryRoot()
{
    for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        if (File.Exists(Path.Combine(dir.FullName, "Mola.sln"))) return dir.FullName;
    throw new InvalidOperationException("run from inside the repository (Mola.sln not found above the current directory)");
}
