using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Data;
using Mola.Evaluation;
using Mola.Models;
using Mola.Platform;
using Mola.Tokenization;
using Mola.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Cli.Commands;

public static class TrainCommand
{
    const string SpecHelp = "one value (8), one value per layer (2,2,4,4,...), or a group pattern of fewer values, one per group of near-equal contiguous layers (2,4,6,8 or 2468)";

    // The paper's recipe: the defaults of the library's run description, shown by --help.
    static readonly RunDescription Paper = new() { BaseModel = "", Data = "", Output = "" };

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
        var reportTo = new Option<string>("--report-to")
        {
            Description = "Also report metrics to: none, or tensorboard (event files under OUTPUT/tensorboard: loss, ce, aux, lr, grad norm, " +
                "tokens/s, eval loss, per-layer expert usage histograms). Every run draws OUTPUT/loss.png at the end and on resume",
            DefaultValueFactory = _ => "none",
        };
        reportTo.AcceptOnlyFromAmong("none", "tensorboard");
        var template = new Option<string>("--template") { Description = "Prompt template: alpaca, or a JSON file with prompt_input, prompt_no_input, response_split", DefaultValueFactory = _ => "alpaca" };
        var kind = new Option<string>("--adapter-kind") { Description = "mola (mixture of LoRA experts) or lora (plain LoRA, the paper's baseline)", DefaultValueFactory = _ => Paper.Adapter.Kind };
        var experts = new Option<string>("--experts") { Description = $"Experts per layer: {SpecHelp}; or square:N, inverted-triangle (2468, the paper's best), triangle (8642), hourglass (8228), diamond (2882)" + AllocationOptions.ExpertsHelp, DefaultValueFactory = _ => AdapterSpec.DefaultExperts };
        var topK = new Option<string>("--top-k") { Description = $"Experts per token, per layer: {SpecHelp}", DefaultValueFactory = _ => AdapterSpec.DefaultTopK };
        var rank = new Option<string>("--rank") { Description = $"LoRA rank per layer: {SpecHelp}", DefaultValueFactory = _ => Paper.Adapter.Rank };
        var alpha = new Option<double>("--alpha") { Description = "LoRA alpha (experts are scaled by alpha / rank)", DefaultValueFactory = _ => Paper.Adapter.Alpha };
        var dropout = new Option<double>("--dropout") { Description = "Dropout on the experts' input, in [0, 1)", DefaultValueFactory = _ => Paper.Adapter.Dropout };
        var targets = new Option<string>("--targets") { Description = "Modules to adapt, comma separated, or all", DefaultValueFactory = _ => Paper.Adapter.Targets };
        var auxCoef = new Option<double>("--aux-loss-coef") { Description = "Weight of the load-balancing loss (0 turns it off)", DefaultValueFactory = _ => Paper.Adapter.AuxLossCoef };
        var lr = new Option<double>("--learning-rate") { Description = "Peak AdamW learning rate", DefaultValueFactory = _ => Paper.Training.LearningRate };
        var warmup = new Option<int>("--warmup-steps") { Description = "Linear warm-up steps, then linear decay to 0", DefaultValueFactory = _ => Paper.Training.WarmupSteps };
        var epochs = new Option<int>("--epochs") { Description = "Passes over the training data", DefaultValueFactory = _ => Paper.Training.Epochs };
        var maxSteps = new Option<int>("--max-steps") { Description = "Stop after this many optimizer steps (0: run the epochs)", DefaultValueFactory = _ => Paper.Training.MaxSteps };
        var batch = new Option<int>("--batch-size") { Description = "Examples per optimizer step (the effective batch)", DefaultValueFactory = _ => Paper.Training.BatchSize };
        var micro = new Option<int>("--micro-batch-size") { Description = "Examples per forward pass (gradients accumulate up to --batch-size)", DefaultValueFactory = _ => Paper.Training.MicroBatchSize };
        var cutoff = new Option<int>("--cutoff-len") { Description = "Most tokens per example (longer ones are cut)", DefaultValueFactory = _ => Paper.Tokenize.CutoffLen };
        var valSize = new Option<int>("--val-set-size") { Description = "Records held out (seeded) for the evaluation loss; 0: none", DefaultValueFactory = _ => 0 };
        var trainOnInputs = new Option<bool>("--train-on-inputs") { Description = "Learn the prompt tokens too; --train-on-inputs false gives them label -100 [default: true]", DefaultValueFactory = _ => Paper.Tokenize.TrainOnInputs, Arity = ArgumentArity.ZeroOrOne };
        var addEos = new Option<bool>("--add-eos") { Description = "Append EOS to every example that fits; --add-eos false to not [default: true]", DefaultValueFactory = _ => Paper.Tokenize.AddEos, Arity = ArgumentArity.ZeroOrOne };
        var groupByLength = new Option<bool>("--group-by-length") { Description = "Batch examples of similar length together (less padding)", Arity = ArgumentArity.ZeroOrOne };
        var saveSteps = new Option<int>("--save-steps") { Description = "Checkpoint every this many steps (0: only the final adapter)", DefaultValueFactory = _ => Paper.Training.SaveSteps };
        var saveLimit = new Option<int>("--save-total-limit") { Description = "Checkpoints kept, oldest deleted first (0: all)", DefaultValueFactory = _ => Paper.Training.SaveTotalLimit };
        var evalSteps = new Option<int>("--eval-steps") { Description = "Validation loss every this many steps (0: at each checkpoint and at the end)", DefaultValueFactory = _ => 0 };
        var resume = new Option<string?>("--resume") { Description = "Continue an interrupted run: a checkpoint directory, or latest (the newest in --output). Ctrl-C or SIGTERM saves the current step for it" };
        var init = new Option<string>("--init")
        {
            Description = "How the experts start: lora (B = 0, the base unchanged) or pissa (every expert from the top-r singular triplets of " +
                "its base weight W, and W replaced by the residual: the same model at step 0; MoLA only; the factors are saved in pissa_init.safetensors)",
            DefaultValueFactory = _ => Paper.Adapter.Init,
        };
        init.AcceptOnlyFromAmong("lora", "pissa");
        var pissaIterations = new Option<string>("--pissa-iterations")
        {
            Description = "With --init pissa: subspace iterations of the randomized SVD that finds each W's top-r triplets (about 7 CPU-s a 1.1B layer, " +
                "measured), or full (= 0) for the exact SVD of every W (some 35 times slower). The step-0 model equals the base either way",
            DefaultValueFactory = _ => PissaInit.DefaultIterations.ToString(CultureInfo.InvariantCulture),
        };
        var initAdapter = new Option<string?>("--init-adapter") { Description = "Start from a trained adapter (continuous learning); its experts, top-k, rank and targets are used" };
        var checkpointing = new Option<bool>("--gradient-checkpointing")
        {
            Description = "Keep only each decoder layer's input and recompute the layer in the backward pass: much less activation memory " +
                "(larger micro-batches or sequences fit) for about one more forward pass per step; the gradients are the same",
        };
        var skipMemoryCheck = new Option<bool>("--skip-memory-check")
        {
            Description = $"Train even when the planned peak memory (mola params shows the plan) is above what the machine has available " +
                $"(MemAvailable, or the container's limit; {AvailableMemory.LimitVariable}=6G sets the figure instead)",
        };
        var seed = new Option<int>("--seed") { Description = "Seed of initialisation, shuffling, split and dropout: the same seed gives the same run", DefaultValueFactory = _ => Paper.Training.Seed };
        var dtype = Cli.DTypeOption();
        var adapterPrecision = new Option<string>("--adapter-precision")
        {
            Description = "How the adapter computes over a bfloat16/float16 base: mixed (the router, A and B products in the base dtype, " +
                "as autocast gives the paper's fp16 training, with float32 parameters, gradients and optimizer state and the router's softmax " +
                "in float32) or float32 (every adapter product in float32 on a float32 copy of its input: slower, the rounding of the " +
                "earlier versions). Over a float32 base both are float32",
            DefaultValueFactory = _ => AdapterPrecision.Mixed.Name(),
        };
        adapterPrecision.AcceptOnlyFromAmong(AdapterPrecision.Mixed.Name(), AdapterPrecision.Float32.Name());
        var device = Cli.DeviceOption();
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace a previous run in --output: it is kept aside until this run finishes and comes back if this one fails" };
        var json = Cli.JsonOption();
        var allocation = new AllocationOptions();

        var cmd = new Command("train", "Instruction-tune a MoLA (or LoRA) adapter on a frozen base model. " +
            "With no --base-model and no --data it trains the embedded default: a small LLaMA-architecture model on a " +
            "multiple-choice task, and prints held-out accuracy before and after. The defaults below are the paper's; the " +
            "embedded default has its own (learning rate, batch, steps: assets/README.md), and an option given still wins. " +
            "Under Open MPI's mpirun -np N it trains data-parallel over N ranks, with the same options and results (README: distributed training; " +
            "MOLA_MPI_TIMEOUT: seconds a rank waits for the others, default 300).")
        {
            baseModel, data, output, template, kind, experts, topK, rank, alpha, dropout, targets, auxCoef, lr, warmup, epochs,
            maxSteps, batch, micro, cutoff, valSize, trainOnInputs, addEos, groupByLength, saveSteps, saveLimit, evalSteps, skipMemoryCheck,
            resume, init, pissaIterations, initAdapter, checkpointing, seed, dtype, adapterPrecision, device, overwrite, reportTo, json,
        };
        foreach (var opt in allocation.All) cmd.Options.Add(opt);

        bool interrupted = false;   // the run stopped on a signal: the command exits 130 or 143
        cmd.SetAction(p =>
        {
            using var interruption = new Interruption();
            int exit = DistributedRun.Run(parallel => Cli.Run(p, json, o => Train(p, o, interruption, parallel)));
            return interruption.ExitCode is int signalled && exit == 0 && interrupted ? signalled : exit;
        });
        return cmd;

        object? Train(ParseResult p, Output o, Interruption interruption, Mola.Distributed.DataParallel? parallel)
        {
            string? baseDir = p.GetValue(baseModel), dataPath = p.GetValue(data);
            bool embedded = baseDir is null && dataPath is null;
            if (!embedded && (baseDir is null || dataPath is null))
                throw new MolaException("give both --base-model and --data, or neither to train the embedded default");
            var d = embedded ? DefaultRun.Settings : null;
            // The embedded default has its own settings; an option given on the command line still wins.
            T Pick<T>(Option<T> opt, T? embeddedValue) where T : struct => embeddedValue is T v && p.GetResult(opt) is null or { Implicit: true } ? v : p.GetValue(opt);
            string? Given(Option<string> opt) => p.GetResult(opt) is { Implicit: false } ? p.GetValue(opt) : null;

            var run = new RunDescription
            {
                BaseModel = baseDir ?? DefaultRun.ModelDirectory,
                Data = dataPath ?? DefaultRun.TrainData,
                Output = p.GetValue(output) ?? (embedded ? Path.Combine("runs", "default") : Path.Combine("runs", DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture))),
                Template = embedded && p.GetResult(template) is null or { Implicit: true } ? DefaultRun.Template : p.GetValue(template)!,
                Training = new TrainingOptions
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
                },
                Tokenize = new TokenizeOptions(Pick(cutoff, d?.CutoffLen), p.GetValue(addEos), Pick(trainOnInputs, d?.TrainOnInputs)),
                Adapter = allocation.Apply(p, new AdapterSpec
                {
                    Kind = p.GetValue(kind)!,
                    Experts = Given(experts),
                    TopK = Given(topK),
                    Rank = d is not null && p.GetResult(rank) is null ? d.Rank : p.GetValue(rank)!,
                    Targets = p.GetValue(targets)!,
                    Alpha = p.GetValue(alpha),
                    Dropout = p.GetValue(dropout),
                    AuxLossCoef = p.GetValue(auxCoef),
                    Init = p.GetValue(init)!,
                    PissaIterations = PissaInit.ParseIterations(p.GetValue(pissaIterations)!, "pissa_iterations"),
                }),
                InitAdapter = p.GetValue(initAdapter),
                ValSetSize = p.GetValue(valSize),
                Resume = p.GetValue(resume),
                Overwrite = p.GetValue(overwrite) || (embedded && p.GetResult(output) is null),
                TensorBoard = p.GetValue(reportTo) == "tensorboard",
                SkipMemoryCheck = p.GetValue(skipMemoryCheck),
                CommandLine = string.Join(" ", p.Tokens.Select(tk => tk.Value)),
            };
            // Every option first, then every input file (the recipe), then the output directory: nothing is touched before all have passed.
            run.Validate();
            if (p.GetResult(pissaIterations) is { Implicit: false } && run.Adapter.Init != "pissa")
                throw new MolaException("--pissa-iterations applies to --init pissa");
            Cli.OutputDirectory(run.Output, "--output");
            if (run.InitAdapter is not null)
            {
                var clash = new Option[] { kind, experts, topK, rank, targets, init, pissaIterations }.FirstOrDefault(opt => p.GetResult(opt) is { Implicit: false });
                if (clash is not null)
                    throw new MolaException($"{clash.Name} cannot be combined with --init-adapter: the adapter's own experts, top-k, rank, targets and init are used");
            }
            run = run with
            {
                DType = Cli.DType(p, dtype),
                Device = Cli.Device(p, device),
                AdapterPrecision = AdapterPrecisions.Parse(p.GetValue(adapterPrecision)!, "--adapter-precision"),
            };

            EvalResult? before = null, after = null;
            var testRecords = embedded ? InstructionRecord.Load(DefaultRun.TestData) : null;
            var reporter = new ProgressReporter(o);
            var recipe = new TrainingRecipe(run)
            {
                Log = o.Line,
                MemoryAdvice = "a smaller --micro-batch-size, --gradient-checkpointing, --dtype bfloat16, a lower --cutoff-len, fewer --experts or a lower --rank " +
                    "(mola params shows the plan), or --skip-memory-check",
                SettingName = Cli.OptionName,
                Progress = (total, loop) => reporter.Run("train", total, report =>
                    loop(m => report(m.Step, $"loss {m.Loss:F4} lr {m.Lr.ToString("0.00e+00", CultureInfo.InvariantCulture)} {m.TokensPerSecond:F0} tok/s"))),
                BeforeTraining = embedded ? m => before = EvaluateDefault(m, testRecords!, o, "before") : null,
                AfterTraining = embedded ? m => after = EvaluateDefault(m, testRecords!, o, "after") : null,
                Parallel = parallel,
            };
            var (result, trainable, replaced) = recipe.Execute(interruption.Token);
            if (result.Interrupted)
            {
                interrupted = true;
                Console.Error.WriteLine(result.Checkpoint is not null
                    ? $"interrupted at step {result.Steps}; continue with --resume latest" + (replaced ? " (a run without it brings back the run this one replaces)" : "")
                    : $"interrupted at step {result.Steps}, before anything was saved; nothing to continue");
                return null;
            }
            return new
            {
                output = run.Output,
                steps = result.Steps,
                final_loss = result.FinalLoss,
                eval_loss = result.EvalLoss,
                seconds = Math.Round(result.Seconds, 2),
                trainable_parameters = trainable,
                accuracy_before = before?.Metrics.Accuracy,
                accuracy_after = after?.Metrics.Accuracy,
            };
        }
    }

    static EvalResult EvaluateDefault(RecipeModel m, List<InstructionRecord> test, Output o, string when)
    {
        var r = Evaluator.Run(m.Model, m.Tokenizer, m.Template, DefaultRun.Task, test, Scoring.Generate, batchSize: 16, maxNewTokens: 12);
        o.Line($"held-out accuracy {when} training: {r.Metrics.Accuracy:P1} ({r.Metrics.Correct}/{r.Metrics.N}; chance {1.0 / DefaultRun.Task.Labels.Count:P0})");
        return r;
    }
}
