using System.Globalization;
using System.Text.RegularExpressions;
using Mola.Adapters;
using Mola.Data;
using Mola.Training;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Mola.Evaluation;

/// <summary>One adapter shape of a study (a row of the paper's Table 1).</summary>
public sealed record StudyVariant(string Name, AdapterSpec Adapter);

/// <summary>One task of a study (a column of Table 1): its benchmark (labels, answer reading) and record files.</summary>
public sealed record StudyTask(string Name, Benchmark Benchmark, string Train, string? Validation, string Test);

/// <summary>A continual-learning sequence: every domain's records are scored as <paramref name="Benchmark"/>; each
/// stage trains <paramref name="Epochs"/> epochs on one domain starting from the adapter of the stage before.</summary>
public sealed record ContinualSpec(Benchmark Benchmark, int Epochs, IReadOnlyList<StudyTask> Domains);

/// <summary>
/// A study (`mola experiment --spec FILE`): every variant x task x seed x epochs value is one ordinary training run,
/// scored on validation (to choose the epochs) and on test. Read from YAML or JSON (JSON is read as the YAML it is),
/// strictly: an unknown key, a missing one or a value of the wrong kind is an error naming the file, line and key.
/// Paths are relative to the spec file's directory.
/// </summary>
public sealed record StudySpec
{
    public required string Path { get; init; }
    public required string BaseModel { get; init; }
    public string Template { get; init; } = "alpaca";
    public Scoring Scoring { get; init; } = Scoring.Generate;
    public required IReadOnlyList<int> Seeds { get; init; }
    /// <summary>The epochs grid (the paper searches 10, 15, 20); the choice is made on validation accuracy.</summary>
    public required IReadOnlyList<int> Epochs { get; init; }
    public TrainingOptions Training { get; init; } = new();
    public TokenizeOptions Tokenize { get; init; } = new();
    public required IReadOnlyList<StudyVariant> Variants { get; init; }
    public required IReadOnlyList<StudyTask> Tasks { get; init; }
    /// <summary>Transfer (Appendix B): instruction records every variant is first tuned on, then each task starts from it.</summary>
    public string? InstructionData { get; init; }
    public int InstructionEpochs { get; init; } = 3;
    /// <summary>Continual learning (Appendix C): domains trained one after another, each stage from the previous adapter.</summary>
    public ContinualSpec? Continual { get; init; }

    static readonly Regex NamePattern = new("^[A-Za-z0-9._-]+$");

    public static StudySpec Load(string path)
    {
        string text = System.Text.Encoding.UTF8.GetString(InputFile.ReadAllBytes(path)).TrimStart('\uFEFF');
        YamlMappingNode root;
        try
        {
            var stream = new YamlStream();
            stream.Load(new StringReader(text));
            if (stream.Documents.Count != 1 || stream.Documents[0].RootNode is not YamlMappingNode m)
                throw new MolaException($"{path}: expected one mapping of study keys (base_model, variants, tasks, ...)");
            root = m;
        }
        catch (YamlException e)
        {
            throw new MolaException($"{path}:{e.Start.Line}: {(e.InnerException ?? e).Message}");
        }
        catch (InvalidOperationException e)
        {
            // YamlDotNet's parser state errors (an unclosed flow list) carry no position.
            throw new MolaException($"{path}: not valid YAML or JSON ({e.Message.TrimEnd('.')})");
        }
        return new Reader(path).Study(root);
    }

    /// <summary>Walks the parsed tree: every mapping's keys are checked against the ones it may hold.</summary>
    sealed class Reader(string path)
    {
        readonly string _dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;

        MolaException Error(YamlNode node, string message) => new($"{path}:{node.Start.Line}: {message}");

        Dictionary<string, YamlNode> Map(YamlNode node, string where, params string[] allowed)
        {
            if (node is not YamlMappingNode m) throw Error(node, $"{where}: expected a mapping with keys {string.Join(", ", allowed)}");
            var keys = new Dictionary<string, YamlNode>();
            foreach (var (k, v) in m.Children)
            {
                string key = (k as YamlScalarNode)?.Value ?? throw Error(k, $"{where}: a key must be a plain name");
                if (!allowed.Contains(key)) throw Error(k, $"unknown key \"{key}\" in {where} (expected one of: {string.Join(", ", allowed)})");
                if (!keys.TryAdd(key, v)) throw Error(k, $"duplicate key \"{key}\" in {where}");
            }
            return keys;
        }

        string Scalar(YamlNode node, string key)
        {
            if (node is YamlScalarNode { Value: string v } && v.Length > 0) return v;
            throw Error(node, $"key \"{key}\": expected a value, got {Describe(node)}");
        }

        static string Describe(YamlNode n) => n switch { YamlMappingNode => "a mapping", YamlSequenceNode => "a list", _ => "nothing" };

        YamlNode Required(Dictionary<string, YamlNode> m, string key, YamlNode parent, string where) =>
            m.TryGetValue(key, out var v) ? v : throw Error(parent, $"{where}: missing key \"{key}\"");

        string? Str(Dictionary<string, YamlNode> m, string key) => m.TryGetValue(key, out var v) ? Scalar(v, key) : null;

        string? PathOf(Dictionary<string, YamlNode> m, string key) =>
            Str(m, key) is string p ? System.IO.Path.GetFullPath(System.IO.Path.Combine(_dir, p)) : null;

        T Number<T>(YamlNode node, string key, string expected, Func<string, T?> parse) where T : struct =>
            parse(Scalar(node, key)) ?? throw Error(node, $"key \"{key}\": expected {expected}, got \"{((YamlScalarNode)node).Value}\"");

        int Int(YamlNode n, string key) => Number(n, key, "an integer", s => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : (int?)null);
        double Dbl(YamlNode n, string key) => Number(n, key, "a number", s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : (double?)null);
        bool Bool(YamlNode n, string key) => Number(n, key, "true or false", s => bool.TryParse(s, out bool v) ? v : (bool?)null);

        List<YamlNode> Seq(YamlNode node, string key)
        {
            if (node is YamlSequenceNode s && s.Children.Count > 0) return [.. s.Children];
            throw Error(node, $"key \"{key}\": expected a non-empty list, got {(node is YamlSequenceNode ? "an empty list" : node is YamlScalarNode ? "one value" : Describe(node))}");
        }

        List<int> Ints(YamlNode node, string key, int min)
        {
            var values = Seq(node, key).Select(n => Int(n, key)).ToList();
            if (values.FirstOrDefault(v => v < min) is int bad && values.Any(v => v < min)) throw Error(node, $"key \"{key}\": {bad} is below {min}");
            if (values.Distinct().Count() != values.Count) throw Error(node, $"key \"{key}\": a value is repeated");
            return values;
        }

        string Name(YamlNode node, string key)
        {
            string name = Scalar(node, key);
            return NamePattern.IsMatch(name) ? name : throw Error(node, $"key \"{key}\": \"{name}\" names a directory of the study; use letters, digits, '.', '_' or '-'");
        }

        static readonly string[] StudyKeys = ["base_model", "template", "scoring", "seeds", "epochs", "training", "variants", "tasks", "instruction", "continual"];
        static readonly string[] TrainingKeys = ["learning_rate", "warmup_steps", "batch_size", "micro_batch_size", "max_steps", "cutoff_len",
            "train_on_inputs", "add_eos", "group_by_length", "gradient_checkpointing", "save_steps", "save_total_limit"];
        static readonly string[] VariantKeys = ["name", "kind", "experts", "top_k", "rank", "targets", "alpha", "dropout", "aux_loss_coef", "init", "pissa_iterations"];
        static readonly string[] TaskKeys = ["name", "benchmark", "train", "validation", "test"];

        public StudySpec Study(YamlMappingNode root)
        {
            var m = Map(root, "the study", StudyKeys);
            var training = new TrainingOptions();
            var tokenize = new TokenizeOptions();
            if (m.TryGetValue("training", out var t)) (training, tokenize) = Training(t);
            var epochs = Ints(Required(m, "epochs", root, "the study"), "epochs", 1);
            ContinualSpec? continual = m.TryGetValue("continual", out var cn) ? Continual(cn) : null;
            var tasks = m.TryGetValue("tasks", out var tn) || continual is null
                ? Seq(Required(m, "tasks", root, "the study"), "tasks").Select((n, i) => Task(n, $"tasks[{i}]", epochs.Count)).ToList()
                : [];
            var variants = Seq(Required(m, "variants", root, "the study"), "variants").Select((n, i) => Variant(n, $"variants[{i}]")).ToList();
            Unique(variants.Select(v => v.Name), root, "variants");
            Unique(tasks.Select(x => x.Name), root, "tasks");
            string? instruction = null;
            int instructionEpochs = 3;
            if (m.TryGetValue("instruction", out var ins))
            {
                var im = Map(ins, "instruction", "data", "epochs");
                instruction = PathOf(im, "data") ?? throw Error(ins, "instruction: missing key \"data\"");
                if (im.TryGetValue("epochs", out var ie)) instructionEpochs = Int(ie, "epochs");
            }
            return new StudySpec
            {
                Path = path,
                BaseModel = PathOf(m, "base_model") ?? throw Error(root, "the study: missing key \"base_model\""),
                Template = Str(m, "template") is string tmpl ? (tmpl == "alpaca" ? tmpl : PathOf(m, "template")!) : "alpaca",
                Scoring = m.TryGetValue("scoring", out var sc) ? Wrap(sc, () => Evaluator.ParseScoring(Scalar(sc, "scoring"))) : Scoring.Generate,
                Seeds = Ints(Required(m, "seeds", root, "the study"), "seeds", 0),
                Epochs = epochs,
                Training = training,
                Tokenize = tokenize,
                Variants = variants,
                Tasks = tasks,
                InstructionData = instruction,
                InstructionEpochs = instructionEpochs,
                Continual = continual,
            };
        }

        void Unique(IEnumerable<string> names, YamlNode at, string key)
        {
            var dup = names.GroupBy(x => x).FirstOrDefault(g => g.Count() > 1);
            if (dup is not null) throw Error(at, $"{key}: the name \"{dup.Key}\" is used twice");
        }

        /// <summary>A library check's message, placed at the key's line.</summary>
        T Wrap<T>(YamlNode node, Func<T> f)
        {
            try { return f(); }
            catch (MolaException e) { throw Error(node, e.Message); }
        }

        (TrainingOptions, TokenizeOptions) Training(YamlNode node)
        {
            var m = Map(node, "training", TrainingKeys);
            var o = new TrainingOptions();
            var k = new TokenizeOptions();
            foreach (var (key, v) in m)
            {
                o = key switch
                {
                    "learning_rate" => o with { LearningRate = Dbl(v, key) },
                    "warmup_steps" => o with { WarmupSteps = Int(v, key) },
                    "batch_size" => o with { BatchSize = Int(v, key) },
                    "micro_batch_size" => o with { MicroBatchSize = Int(v, key) },
                    "max_steps" => o with { MaxSteps = Int(v, key) },
                    "group_by_length" => o with { GroupByLength = Bool(v, key) },
                    "gradient_checkpointing" => o with { GradientCheckpointing = Bool(v, key) },
                    "save_steps" => o with { SaveSteps = Int(v, key) },
                    "save_total_limit" => o with { SaveTotalLimit = Int(v, key) },
                    _ => o,
                };
                k = key switch
                {
                    "cutoff_len" => k with { CutoffLen = Int(v, key) },
                    "train_on_inputs" => k with { TrainOnInputs = Bool(v, key) },
                    "add_eos" => k with { AddEos = Bool(v, key) },
                    _ => k,
                };
            }
            Wrap(node, () => { o.Validate(); return 0; });
            return (o, k);
        }

        StudyVariant Variant(YamlNode node, string where)
        {
            var m = Map(node, where, VariantKeys);
            var a = new AdapterSpec
            {
                Kind = Str(m, "kind") ?? "mola",
                Experts = Str(m, "experts"),
                TopK = Str(m, "top_k"),
                Rank = Str(m, "rank") ?? AdapterSpec.Paper.Rank,
                Targets = Str(m, "targets") ?? AdapterSpec.Paper.Targets,
                Alpha = m.TryGetValue("alpha", out var al) ? Dbl(al, "alpha") : AdapterSpec.Paper.Alpha,
                Dropout = m.TryGetValue("dropout", out var dr) ? Dbl(dr, "dropout") : AdapterSpec.Paper.Dropout,
                AuxLossCoef = m.TryGetValue("aux_loss_coef", out var ax) ? Dbl(ax, "aux_loss_coef") : AdapterSpec.Paper.AuxLossCoef,
                Init = Str(m, "init") ?? AdapterSpec.Paper.Init,
                PissaIterations = m.TryGetValue("pissa_iterations", out var pi) ? Wrap(pi, () => PissaInit.ParseIterations(Scalar(pi, "pissa_iterations"), "pissa_iterations"))
                    : AdapterSpec.Paper.PissaIterations,
            };
            if (pi is not null && a.Init != "pissa") throw Error(pi, "key \"pissa_iterations\" applies to init: pissa");
            // The specs that need no layer count are checked here; the allocation itself once config.json is read.
            Wrap(node, () => { a.Validate(); AdapterKinds.Parse(a.Kind); return 0; });
            return new StudyVariant(Name(Required(m, "name", node, where), "name"), a);
        }

        ContinualSpec Continual(YamlNode node)
        {
            var m = Map(node, "continual", "benchmark", "epochs", "domains");
            var bench = Required(m, "benchmark", node, "continual");
            var benchmark = Wrap(bench, () => Benchmarks.Get(Scalar(bench, "benchmark")));
            int epochs = m.TryGetValue("epochs", out var e) ? Int(e, "epochs") : 1;
            var domains = Seq(Required(m, "domains", node, "continual"), "domains").Select((n, i) =>
            {
                var d = Map(n, $"continual.domains[{i}]", "name", "train", "test");
                return new StudyTask(Name(Required(d, "name", n, $"continual.domains[{i}]"), "name"), benchmark,
                    PathOf(d, "train") ?? throw Error(n, $"continual.domains[{i}]: missing key \"train\""), null,
                    PathOf(d, "test") ?? throw Error(n, $"continual.domains[{i}]: missing key \"test\""));
            }).ToList();
            Unique(domains.Select(d => d.Name), node, "continual.domains");
            return new ContinualSpec(benchmark, epochs, domains);
        }

        StudyTask Task(YamlNode node, string where, int epochChoices)
        {
            var m = Map(node, where, TaskKeys);
            var bench = Required(m, "benchmark", node, where);
            string? validation = PathOf(m, "validation");
            if (validation is null && epochChoices > 1)
                throw Error(node, $"{where}: missing key \"validation\": the epochs grid is searched on validation records, never on test");
            return new StudyTask(Name(Required(m, "name", node, where), "name"), Wrap(bench, () => Benchmarks.Get(Scalar(bench, "benchmark"))),
                PathOf(m, "train") ?? throw Error(node, $"{where}: missing key \"train\""), validation,
                PathOf(m, "test") ?? throw Error(node, $"{where}: missing key \"test\""));
        }
    }
}
