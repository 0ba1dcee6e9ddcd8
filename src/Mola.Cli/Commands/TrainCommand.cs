using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Data;
using Mola.Evaluation;
using Mola.Models;
using Mola.Tokenization;
using Mola.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Cli.Commands;

public static class TrainCommand
{
    const string SpecHelp = "one value (8), one value per layer (2,2,4,4,...), or a group pattern of fewer values, one per group of near-equal contiguous layers (2,4,6,8 or 2468)";

    public static Command Create()
    {
        var baseModel = Cli.BaseModelOption(required: false);
        baseModel.Description += ". With neither --base-model nor --data: the embedded default model and task";
        var data = new Option<string?>("--data") { Description = "Training records: JSON array or JSONL of {\"instruction\", \"input\", \"output\"}" };
        var output = new Option<string?>("--output")
        {
            Description = "Output directory (adapter, metrics.jsonl, checkpoints), locked against a second writer while the run lasts. " +
            "Default: runs/<time>, or runs/default for the embedded default"
        };
        var template = new Option<string>("--template") { Description = "Prompt template: alpaca, or a JSON file with prompt_input, prompt_no_input, response_split", DefaultValueFactory = _ => "alpaca" };
        var kind = new Option<string>("--adapter-kind") { Description = "mola (mixture of LoRA experts) or lora (plain LoRA, the paper's baseline)", DefaultValueFactory = _ => "mola" };
        var experts = new Option<string>("--experts") { Description = $"Experts per layer: {SpecHelp}; or square:N, inverted-triangle (2468, the paper's best), triangle (8642), hourglass (8228), diamond (2882)", DefaultValueFactory = _ => "inverted-triangle" };
        var topK = new Option<string>("--top-k") { Description = $"Experts per token, per layer: {SpecHelp}", DefaultValueFactory = _ => "2" };
        var rank = new Option<string>("--rank") { Description = $"LoRA rank per layer: {SpecHelp}", DefaultValueFactory = _ => "8" };
        var alpha = new Option<double>("--alpha") { Description = "LoRA alpha (experts are scaled by alpha / rank)", DefaultValueFactory = _ => 16 };
        var dropout = new Option<double>("--dropout") { Description = "Dropout on the experts' input, in [0, 1)", DefaultValueFactory = _ => 0.05 };
        var targets = new Option<string>("--targets") { Description = "Modules to adapt, comma separated, or all", DefaultValueFactory = _ => "all" };
        var auxCoef = new Option<double>("--aux-loss-coef") { Description = "Weight of the load-balancing loss (0 turns it off)", DefaultValueFactory = _ => 0.001 };
        var lr = new Option<double>("--learning-rate") { Description = "Peak AdamW learning rate", DefaultValueFactory = _ => 3e-4 };
        var warmup = new Option<int>("--warmup-steps") { Description = "Linear warm-up steps, then linear decay to 0", DefaultValueFactory = _ => 100 };
        var epochs = new Option<int>("--epochs") { Description = "Passes over the training data", DefaultValueFactory = _ => 3 };
        var maxSteps = new Option<int>("--max-steps") { Description = "Stop after this many optimizer steps (0: run the epochs)", DefaultValueFactory = _ => 0 };
        var batch = new Option<int>("--batch-size") { Description = "Examples per optimizer step (the effective batch)", DefaultValueFactory = _ => 128 };
        var micro = new Option<int>("--micro-batch-size") { Description = "Examples per forward pass (gradients accumulate up to --batch-size)", DefaultValueFactory = _ => 8 };
        var cutoff = new Option<int>("--cutoff-len") { Description = "Most tokens per example (longer ones are cut)", DefaultValueFactory = _ => 256 };
        var valSize = new Option<int>("--val-set-size") { Description = "Records held out (seeded) for the evaluation loss; 0: none", DefaultValueFactory = _ => 0 };
        var trainOnInputs = new Option<bool>("--train-on-inputs") { Description = "Learn the prompt tokens too; --train-on-inputs false gives them label -100 [default: true]", DefaultValueFactory = _ => true, Arity = ArgumentArity.ZeroOrOne };
        var addEos = new Option<bool>("--add-eos") { Description = "Append EOS to every example that fits; --add-eos false to not [default: true]", DefaultValueFactory = _ => true, Arity = ArgumentArity.ZeroOrOne };
        var groupByLength = new Option<bool>("--group-by-length") { Description = "Batch examples of similar length together (less padding)", Arity = ArgumentArity.ZeroOrOne };
        var saveSteps = new Option<int>("--save-steps") { Description = "Checkpoint every this many steps (0: only the final adapter)", DefaultValueFactory = _ => 200 };
        var saveLimit = new Option<int>("--save-total-limit") { Description = "Checkpoints kept, oldest deleted first (0: all)", DefaultValueFactory = _ => 3 };
        var evalSteps = new Option<int>("--eval-steps") { Description = "Validation loss every this many steps (0: at each checkpoint and at the end)", DefaultValueFactory = _ => 0 };
        var resume = new Option<string?>("--resume") { Description = "Continue an interrupted run: a checkpoint directory, or latest (the newest in --output). Ctrl-C or SIGTERM saves the current step for it" };
        var initAdapter = new Option<string?>("--init-adapter") { Description = "Start from a trained adapter (continuous learning); its experts, top-k, rank and targets are used" };
        var checkpointing = new Option<bool>("--gradient-checkpointing")
        {
            Description = "Keep only each decoder layer's input and recompute the layer in the backward pass: much less activation memory " +
                "(larger micro-batches or sequences fit) for about one more forward pass per step; the gradients are the same",
        };
        var seed = new Option<int>("--seed") { Description = "Seed of initialisation, shuffling, split and dropout: the same seed gives the same run", DefaultValueFactory = _ => 42 };
        var dtype = Cli.DTypeOption();
        var device = Cli.DeviceOption();
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace a previous run in --output: it is kept aside until this run finishes and comes back if this one fails" };
        var json = Cli.JsonOption();

        var cmd = new Command("train", "Instruction-tune a MoLA (or LoRA) adapter on a frozen base model. " +
            "With no --base-model and no --data it trains the embedded default: a small LLaMA-architecture model on a " +
            "multiple-choice task, and prints held-out accuracy before and after. The defaults below are the paper's; the " +
            "embedded default has its own (learning rate, batch, steps: assets/README.md), and an option given still wins.")
        {
            baseModel, data, output, template, kind, experts, topK, rank, alpha, dropout, targets, auxCoef, lr, warmup, epochs,
            maxSteps, batch, micro, cutoff, valSize, trainOnInputs, addEos, groupByLength, saveSteps, saveLimit, evalSteps,
            resume, initAdapter, checkpointing, seed, dtype, device, overwrite, json,
        };

        bool interrupted = false;   // the run stopped on a signal: the command exits 130 or 143
        cmd.SetAction(p =>
        {
            using var interruption = new Interruption();
            int exit = Cli.Run(p, json, o => Train(p, o, interruption));
            return interruption.ExitCode is int signalled && exit == 0 && interrupted ? signalled : exit;
        });
        return cmd;

        object? Train(ParseResult p, Output o, Interruption interruption)
        {
            string? baseDir = p.GetValue(baseModel), dataPath = p.GetValue(data);
            bool embedded = baseDir is null && dataPath is null;
            if (!embedded && (baseDir is null || dataPath is null))
                throw new MolaException("give both --base-model and --data, or neither to train the embedded default");
            var d = embedded ? DefaultRun.Settings : null;
            // The embedded default has its own settings; an option given on the command line still wins.
            T Pick<T>(Option<T> opt, T? embeddedValue) where T : struct => embeddedValue is T v && p.GetResult(opt) is null or { Implicit: true } ? v : p.GetValue(opt);

            var options = new TrainingOptions
            {
                LearningRate = Pick(lr, d?.LearningRate),
                WarmupSteps = Pick(warmup, d?.WarmupSteps),
                Epochs = Pick(epochs, d?.Epochs),
                MaxSteps = Pick(maxSteps, d?.MaxSteps),
                BatchSize = Pick(batch, d?.BatchSize),
                MicroBatchSize = Pick(micro, d?.MicroBatchSize),
                GroupByLength = p.GetValue(groupByLength),
                Seed = p.GetValue(seed),
                SaveSteps = Pick(saveSteps, d?.SaveSteps),
                SaveTotalLimit = p.GetValue(saveLimit),
                EvalSteps = p.GetValue(evalSteps),
                GradientCheckpointing = p.GetValue(checkpointing),
            };
            // Every option first, then every input file, then the output directory: nothing is touched before all have passed.
            options.Validate();
            CheckValue(p, alpha, v => v > 0 && double.IsFinite(v), "a positive finite number");
            CheckValue(p, dropout, v => v is >= 0 and < 1, "in [0, 1)");
            CheckValue(p, auxCoef, v => v >= 0 && double.IsFinite(v), "a finite number, 0 or more");
            if (p.GetValue(cutoff) < 1) throw new MolaException($"--cutoff-len must be at least 1, got {p.GetValue(cutoff)}");
            if (p.GetValue(valSize) < 0) throw new MolaException($"--val-set-size must be 0 or more, got {p.GetValue(valSize)}");
            baseDir ??= DefaultRun.ModelDirectory;
            dataPath ??= DefaultRun.TrainData;
            string outDir = p.GetValue(output) ?? (embedded ? Path.Combine("runs", "default") : Path.Combine("runs", DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture)));
            Cli.OutputDirectory(outDir, "--output");
            string? resumeArg = p.GetValue(resume);
            bool replace = p.GetValue(overwrite) || (embedded && p.GetResult(output) is null);

            // Everything that can be checked without weights is checked first.
            if (p.GetValue(initAdapter) is not null)
            {
                var clash = new Option[] { kind, experts, topK, rank, targets }.FirstOrDefault(opt => p.GetResult(opt) is { Implicit: false });
                if (clash is not null)
                    throw new MolaException($"{clash.Name} cannot be combined with --init-adapter: the adapter's own experts, top-k, rank and targets are used");
            }
            var config = ModelConfig.Load(baseDir);
            var adapterConfig = p.GetValue(initAdapter) is string init ? AdapterConfig.Load(init) : BuildAdapterConfig(p, config, baseDir, kind, experts, topK, rank, alpha, dropout, targets, auxCoef, d);
            adapterConfig = adapterConfig.ForModel(config.NumHiddenLayers, "--init-adapter");
            adapterConfig.Validate("adapter", config.NumHiddenLayers);
            var dtypeValue = Cli.DType(p, dtype);
            var deviceValue = Cli.Device(p, device);
            CheckFitsInMemory(config, adapterConfig, dtypeValue, deviceValue);
            var tmpl = PromptTemplate.Load(embedded && p.GetResult(template) is null or { Implicit: true } ? DefaultRun.Template : p.GetValue(template)!);
            var records = InstructionRecord.Load(dataPath);
            var (trainRecords, valRecords) = InstructionDataset.Split(records, p.GetValue(valSize), options.Seed);
            var tok = MolaTokenizer.Load(baseDir, config.BosTokenId, config.EosTokenId, config.VocabSize);
            var tokenize = new TokenizeOptions(Pick(cutoff, d?.CutoffLen), p.GetValue(addEos), Pick(trainOnInputs, d?.TrainOnInputs));
            if (tokenize.CutoffLen > config.MaxPositionEmbeddings)
                o.Line($"warning: --cutoff-len {tokenize.CutoffLen} is past the model's {config.MaxPositionEmbeddings} positions (max_position_embeddings): " +
                    "longer examples train on positions the model never saw");
            var trainSet = InstructionDataset.Create(trainRecords, tmpl, tok, tokenize);
            var valSet = valRecords.Count > 0 ? InstructionDataset.Create(valRecords, tmpl, tok, tokenize) : null;

            // One writer per run directory, from here to the end; then what a killed run left is sorted out.
            using var runLock = RunLock.Acquire(outDir, $"--output {outDir}");
            bool movedAside = false;
            try
            {
                foreach (var line in RunDirectory.Tidy(outDir, resuming: resumeArg is not null)) o.Line(line);
                bool replacing = CheckOutput(outDir, resumeArg is not null, replace);
                string? resumeDir = resumeArg is null ? null
                    : resumeArg == "latest" ? Checkpoints.Latest(outDir) ?? throw new MolaException($"{outDir}: no checkpoint to resume from")
                    : resumeArg;

                using var model = ModelLoader.Load(baseDir, dtypeValue, deviceValue, o.Line);
                torch.manual_seed(options.Seed);
                var adapter = p.GetValue(initAdapter) is string initDir ? AdapterModel.Load(model, initDir) : AdapterModel.Attach(model, adapterConfig);
                o.Line($"base {baseDir} ({config.ModelType}, {config.NumHiddenLayers} layers), data {dataPath}: {trainSet.Count} train / {valSet?.Count ?? 0} validation records");
                o.Line(AdapterSummary(adapter.Config, adapter.parameters().Sum(t => t.numel())));

                EvalResult? before = null;
                var testRecords = embedded ? InstructionRecord.Load(DefaultRun.TestData) : null;
                if (embedded) before = EvaluateDefault(model, tok, tmpl, testRecords!, o, "before");

                // The previous run steps aside only now, when everything above has loaded, and comes back unless this run finishes.
                if (replacing) movedAside = RunDirectory.MoveAside(outDir);
                var trainer = new Trainer(adapter, trainSet, valSet, options, outDir);
                if (movedAside) trainer.FailureNote = $"this run is discarded and the run it was to replace is restored in {outDir}";
                if (options.WarmupSteps >= trainer.TotalSteps)
                {
                    double peak = options.LearningRate * LrSchedule.Factor(trainer.TotalSteps - 1, options.WarmupSteps, trainer.TotalSteps);   // still rising at the last step
                    o.Line($"warning: --warmup-steps {options.WarmupSteps} is not below the run's {trainer.TotalSteps} optimizer steps, so the learning rate " +
                        $"peaks at {peak:G3} instead of {options.LearningRate:G3} (fewer --warmup-steps, a smaller --batch-size or more --epochs)");
                }
                trainer.OnStart = () => WriteTrainingArgs(outDir, p, options, adapter.Config, baseDir, dataPath, tokenize);
                trainer.Log = line => o.Line(line);
                var reporter = new ProgressReporter(o);
                var result = reporter.Run("train", trainer.TotalSteps, report =>
                {
                    trainer.OnStep = m => report(m.Step, $"loss {m.Loss:F4} lr {m.Lr.ToString("0.00e+00", CultureInfo.InvariantCulture)} {m.TokensPerSecond:F0} tok/s");
                    return trainer.Train(resumeDir, interruption.Token);
                });
                if (result.Interrupted)
                {
                    interrupted = true;
                    if (result.Checkpoint is null && movedAside) RunDirectory.Restore(outDir);   // nothing of this run to continue
                    Console.Error.WriteLine(result.Checkpoint is not null
                        ? $"interrupted at step {result.Steps}; continue with --resume latest" + (movedAside ? " (a run without it brings back the run this one replaces)" : "")
                        : $"interrupted at step {result.Steps}, before anything was saved; nothing to continue");
                    return null;
                }
                RunDirectory.Commit(outDir);   // finished: the run it replaced goes
                string trained = result.StartStep > 0
                    ? $"trained steps {result.StartStep + 1} to {result.Steps} ({result.Steps - result.StartStep} after resuming at step {result.StartStep})"
                    : $"trained {result.Steps} steps";
                o.Line($"{trained} in {result.Seconds:F1} s; final loss {result.FinalLoss:F4}" + (result.EvalLoss is double ev ? $", eval loss {ev:F4}" : "") + $"; adapter saved to {outDir}");

                EvalResult? after = embedded ? EvaluateDefault(model, tok, tmpl, testRecords!, o, "after") : null;
                return new
                {
                    output = outDir,
                    steps = result.Steps,
                    final_loss = result.FinalLoss,
                    eval_loss = result.EvalLoss,
                    seconds = Math.Round(result.Seconds, 2),
                    trainable_parameters = adapter.parameters().Sum(t => t.numel()),
                    accuracy_before = before?.Metrics.Accuracy,
                    accuracy_after = after?.Metrics.Accuracy,
                };
            }
            catch when (movedAside || runLock.CreatedDirectory)
            {
                if (movedAside) RunDirectory.Restore(outDir);
                runLock.RemoveIfEmpty();
                throw;
            }
        }
    }

    /// <summary>A floating-point option that must be finite and in range; NaN and Infinity parse, so they are refused here.</summary>
    static void CheckValue(ParseResult p, Option<double> option, Func<double, bool> valid, string expected)
    {
        double v = p.GetValue(option);
        if (!valid(v)) throw new MolaException($"{option.Name} must be {expected}, got {v.ToString(CultureInfo.InvariantCulture)}");
    }

    /// <summary>Refuses, before the model loads, an adapter whose weights, gradients and AdamW moments plus the base
    /// weights cannot fit in this machine's memory (activations come on top).</summary>
    static void CheckFitsInMemory(ModelConfig config, AdapterConfig a, ScalarType dtype, Device device)
    {
        if (device.type != DeviceType.CPU) return;   // the device's memory is not known here
        var counts = a.Kind == AdapterKind.Mola
            ? ParameterCount.Mola(config, a.NumExperts, a.TopK, a.Rank, a.TargetModules)
            : ParameterCount.Lora(config, a.Rank, a.TargetModules);
        var m = ParameterCount.EstimateTrainingMemory(config, counts, dtype, 1, 1);
        ParameterCount.EnsureFitsInMemory(checked(m.BaseWeightsBytes + m.AdapterWeightsBytes + m.AdapterGradientsBytes + m.OptimizerStateBytes),
            $"the {AdapterSummary(a, counts.Total)}, with its gradients, AdamW moments and the base weights,",
            "fewer --experts or a lower --rank (mola params shows the counts)");
    }

    /// <summary>One line: kind, allocation (value x layers) and trainable parameters; LoRA has no experts or top-k.</summary>
    static string AdapterSummary(AdapterConfig a, long trainable)
    {
        string rank = $"rank {ExpertAllocation.Describe(a.Rank)}";
        string shape = a.Kind == AdapterKind.Mola
            ? $"experts {ExpertAllocation.Describe(a.NumExperts)}; top-k {ExpertAllocation.Describe(a.TopK)}; {rank}"
            : rank;
        return $"adapter {a.Kind.Name()}: {shape} (value x layers); {trainable:N0} trainable parameters";
    }

    static AdapterConfig BuildAdapterConfig(ParseResult p, ModelConfig config, string baseDir, Option<string> kind, Option<string> experts, Option<string> topK,
        Option<string> rank, Option<double> alpha, Option<double> dropout, Option<string> targets, Option<double> auxCoef, DefaultRun.RunSettings? d)
    {
        int layers = config.NumHiddenLayers;
        var adapterKind = AdapterKinds.Parse(p.GetValue(kind)!);
        var ranks = ExpertAllocation.Parse(d is not null && p.GetResult(rank) is null ? d.Rank : p.GetValue(rank)!, layers, "--rank");
        int[] e = [], k = [];
        if (adapterKind == AdapterKind.Mola)
        {
            e = ExpertAllocation.ParseExperts(p.GetValue(experts)!, layers, "--experts");
            k = ExpertAllocation.Parse(p.GetValue(topK)!, layers, "--top-k");
            ExpertAllocation.Validate(e, k, ranks);
        }
        else if (p.GetResult(experts) is { Implicit: false } || p.GetResult(topK) is { Implicit: false })
        {
            // Rejected rather than ignored, as in `mola params`: someone passing them expects them to count.
            throw new MolaException("--experts and --top-k apply to --adapter-kind mola only (lora has one LoRA pair per module, no router)");
        }
        return new AdapterConfig
        {
            Kind = adapterKind,
            BaseModelNameOrPath = baseDir,
            TargetModules = TargetModules.Parse(p.GetValue(targets)!),
            Rank = ranks,
            LoraAlpha = p.GetValue(alpha),
            LoraDropout = p.GetValue(dropout),
            NumExperts = e,
            TopK = k,
            AuxLossCoef = p.GetValue(auxCoef),
        };
    }

    /// <summary>Refuses to mix two runs in one directory unless asked to replace it or to resume. Moves nothing: returns
    /// whether there is a run to replace, so that it steps aside only after every input has loaded.</summary>
    static bool CheckOutput(string dir, bool resuming, bool overwrite)
    {
        var entries = RunDirectory.Entries(dir);
        if (entries.Count == 0 || resuming) return false;
        if (!overwrite)
            throw new MolaException($"{dir}: holds another run ({entries[0]}); use --overwrite to replace it, --resume latest to continue it, or another --output");
        return true;
    }

    static void WriteTrainingArgs(string dir, ParseResult p, TrainingOptions o, AdapterConfig a, string baseDir, string dataPath, TokenizeOptions t)
    {
        Directory.CreateDirectory(dir);
        var args = new JsonObject
        {
            ["base_model"] = baseDir,
            ["data"] = dataPath,
            ["adapter_kind"] = a.Kind.Name(),
            ["num_experts"] = new JsonArray(a.NumExperts.Select(x => (JsonNode)x!).ToArray()),
            ["top_k"] = new JsonArray(a.TopK.Select(x => (JsonNode)x!).ToArray()),
            ["rank"] = new JsonArray(a.Rank.Select(x => (JsonNode)x!).ToArray()),
            ["lora_alpha"] = a.LoraAlpha,
            ["lora_dropout"] = a.LoraDropout,
            ["target_modules"] = new JsonArray(a.TargetModules.Select(x => (JsonNode)x!).ToArray()),
            ["aux_loss_coef"] = a.AuxLossCoef,
            ["learning_rate"] = o.LearningRate,
            ["warmup_steps"] = o.WarmupSteps,
            ["epochs"] = o.Epochs,
            ["max_steps"] = o.MaxSteps,
            ["batch_size"] = o.BatchSize,
            ["micro_batch_size"] = o.MicroBatchSize,
            ["max_grad_norm"] = o.MaxGradNorm,
            ["cutoff_len"] = t.CutoffLen,
            ["add_eos"] = t.AddEos,
            ["train_on_inputs"] = t.TrainOnInputs,
            ["group_by_length"] = o.GroupByLength,
            ["gradient_checkpointing"] = o.GradientCheckpointing,
            ["save_steps"] = o.SaveSteps,
            ["save_total_limit"] = o.SaveTotalLimit,
            ["seed"] = o.Seed,
            ["command_line"] = string.Join(" ", p.Tokens.Select(tk => tk.Value)),
        };
        RunDirectory.WriteFile(Path.Combine(dir, "training_args.json"), args.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    static EvalResult EvaluateDefault(CausalLM model, MolaTokenizer tok, PromptTemplate tmpl, List<InstructionRecord> test, Output o, string when)
    {
        var r = Evaluator.Run(model, tok, tmpl, DefaultRun.Task, test, Scoring.Generate, batchSize: 16, maxNewTokens: 12);
        o.Line($"held-out accuracy {when} training: {r.Metrics.Accuracy:P1} ({r.Metrics.Correct}/{r.Metrics.N}; chance {1.0 / DefaultRun.Task.Labels.Count:P0})");
        return r;
    }
}
