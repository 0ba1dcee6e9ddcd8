using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Adapters;
using Mola.Data;
using Mola.Distributed;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>
/// Instruction tuning of an adapter: AdamW over the adapter's parameters only, linear warm-up and
/// decay, gradient accumulation over micro-batches, gradient clipping, loss = CE + coef * aux,
/// atomic resumable checkpoints and a <c>metrics.jsonl</c> line per optimizer step.
/// </summary>
public sealed class Trainer
{
    readonly AdapterModel _adapter;
    readonly InstructionDataset _train;
    readonly InstructionDataset? _val;
    readonly TrainingOptions _o;
    readonly string _out;
    readonly BatchSampler _sampler;

    /// <summary>Called after every optimizer step.</summary>
    public Action<StepMetrics>? OnStep { get; set; }
    /// <summary>Where metrics go besides metrics.jsonl (TensorBoard, loss.png); the caller disposes them.</summary>
    public List<Monitoring.IMetricsSink> Sinks { get; } = [];
    /// <summary>When set, a diverged run's error ends with this instead of naming the last good checkpoint (for a
    /// caller that discards the run's files when it fails).</summary>
    public string? FailureNote { get; set; }
    /// <summary>Human-readable events (checkpoints, evaluation).</summary>
    public Action<string>? Log { get; set; }
    /// <summary>Under mpirun: this rank's share of every step's micro-batches, gradients summed over the ranks,
    /// and files written by rank 0 alone. Null: one process.</summary>
    public DataParallel? Parallel { get; set; }
    bool Writes => Parallel?.IsRoot ?? true;

    public long TotalSteps { get; }
    public int StepsPerEpoch { get; }

    public Trainer(AdapterModel adapter, InstructionDataset train, InstructionDataset? validation, TrainingOptions options, string outputDirectory)
    {
        options.Validate();
        if (train.Count == 0) throw new MolaException("the training set is empty");
        _adapter = adapter;
        _train = train;
        _val = validation is { Count: > 0 } ? validation : null;
        _o = options;
        _out = outputDirectory;
        _sampler = new BatchSampler(train.Lengths, options.MicroBatchSize, options.Seed, options.GroupByLength, options.BatchSize);
        StepsPerEpoch = (_sampler.MicroBatchesPerEpoch + options.AccumulationSteps - 1) / options.AccumulationSteps;
        TotalSteps = options.MaxSteps > 0 ? options.MaxSteps : (long)options.Epochs * StepsPerEpoch;
    }

    public string MetricsPath => Path.Combine(_out, "metrics.jsonl");

    /// <summary>Called once the run is about to take its first step (after a resume has been restored): the place
    /// to write files that describe the run, so that a resume that fails leaves them as they were.</summary>
    public Action? OnStart { get; set; }

    /// <summary>The run's <c>training_args.json</c>, compared on resume with that of the checkpoint's run directory;
    /// null (a trainer used on its own) compares nothing.</summary>
    public string? RunRecord { get; set; }

    /// <summary>Runs to the end (or resumes from <paramref name="resumeCheckpoint"/>) and saves the adapter into the output directory.
    /// When <paramref name="stop"/> is signalled the current optimizer step finishes, a checkpoint of it is saved and the
    /// result says <see cref="TrainResult.Interrupted"/>.</summary>
    public TrainResult Train(string? resumeCheckpoint = null, CancellationToken stop = default)
    {
        if (Writes) Directory.CreateDirectory(_out);
        var device = _adapter.Base.Device;
        var parameters = _adapter.parameters().ToList();
        using var optimizer = new AdamW(parameters, _o.LearningRate) { WeightDecay = _o.WeightDecay };
        var state = new TrainerState();
        if (resumeCheckpoint is not null)
        {
            state = Checkpoints.Restore(resumeCheckpoint, _adapter, optimizer, RunRecord);
            if (Writes)
            {
                TruncateMetrics(state.Step);
                // A run killed between saving a checkpoint and deleting the oldest left one too many.
                Checkpoints.Prune(_out, _o.SaveTotalLimit, protect: resumeCheckpoint);
            }
            Log?.Invoke($"resumed from {resumeCheckpoint} at step {state.Step}");
        }
        else if (Writes && File.Exists(MetricsPath)) File.Delete(MetricsPath);
        if (Parallel is not null) StartTogether(optimizer, state.Step);

        long startStep = state.Step, savedStep = state.Step;
        OnStart?.Invoke();
        if (Writes) foreach (var sink in Sinks) sink.Started(state.Step);
        var clock = Stopwatch.StartNew();
        double? lastLoss = null, lastEval = null;
        var epochBatches = _sampler.MicroBatches(state.Epoch);
        while (state.Step < TotalSteps)
        {
            if (Parallel?.Any(stop.IsCancellationRequested, $"the stop check before step {state.Step + 1}") ?? stop.IsCancellationRequested)
            {
                string? checkpoint = savedStep == state.Step || !Writes ? Checkpoints.Latest(_out)
                    : Checkpoints.Save(_out, state, _adapter, optimizer, _o.SaveTotalLimit);
                if (Writes) foreach (var sink in Sinks) sink.Finished(state.Step);
                return new TrainResult(state.Step, lastLoss, lastEval, clock.Elapsed.TotalSeconds, _out, startStep, Interrupted: true, Checkpoint: checkpoint);
            }
            if (state.MicroBatch >= epochBatches.Count)
            {
                state.Epoch++;
                state.MicroBatch = 0;
                epochBatches = _sampler.MicroBatches(state.Epoch);
            }
            var micro = epochBatches.Skip(state.MicroBatch).Take(_o.AccumulationSteps).Select(ix => ix.Select(i => _train.Examples[i]).ToList()).ToList();
            var stepClock = Stopwatch.StartNew();
            // Dropout seeded by the micro-batch's place alone: the same masks whichever rank runs it.
            var (epoch, first) = (state.Epoch, state.MicroBatch);
            var (loss, ce, aux, tokens) = AccumulateGradients(micro, device, j => SeededPermutation.DerivedSeed(_o.Seed, (uint)epoch, first + j));
            if (Parallel is not null)
            {
                Parallel.Sum(optimizer.FlatGradients, $"the gradient sum of step {state.Step + 1}");
                var sums = Parallel.Sum([loss, ce, aux, tokens], $"the loss sum of step {state.Step + 1}");
                (loss, ce, aux, tokens) = (sums[0], sums[1], sums[2], (long)sums[3]);
            }
            double lr = _o.LearningRate * LrSchedule.Factor(state.Step, _o.WarmupSteps, TotalSteps);
            optimizer.LearningRate = lr;
            // The norm first (a non-finite one stops the run before any update); clipping, the update and zeroing
            // the gradients then run as one pass over the flat buffers (AdamW.Step).
            double gradNorm = optimizer.GradNorm();
            if (!double.IsFinite(loss) || !double.IsFinite(gradNorm))
            {
                optimizer.ZeroGrad();
                string? checkpoint = Checkpoints.Latest(_out);
                string Last(Func<string, string> n) => FailureNote ?? (checkpoint is string c ? $"the last good checkpoint is {c} (continue with {n("resume")} latest, perhaps with a lower {n("learning_rate")})" : "no checkpoint was saved yet");
                throw new MolaException(n => $"step {state.Step + 1}: the loss is {(double.IsFinite(loss) ? "finite but the gradient norm is " + gradNorm : loss.ToString(CultureInfo.InvariantCulture))}; training stopped without saving this step; {Last(n)}");
            }
            optimizer.Step(AdamW.ClipScale(_o.MaxGradNorm, gradNorm), zeroGradients: true);
            state.Step++;
            state.MicroBatch += micro.Count;
            lastLoss = loss;

            double? evalLoss = null;
            bool save = _o.SaveSteps > 0 && state.Step % _o.SaveSteps == 0 && state.Step < TotalSteps;
            bool evalNow = _val is not null && state.Step < TotalSteps && (_o.EvalSteps > 0 ? state.Step % _o.EvalSteps == 0 : save);
            if (evalNow) lastEval = evalLoss = Evaluate();
            var metrics = new StepMetrics
            {
                Step = state.Step,
                Epoch = state.Epoch + (double)Math.Min(state.MicroBatch, epochBatches.Count) / epochBatches.Count,
                Loss = loss,
                CeLoss = ce,
                AuxLoss = aux,
                Lr = lr,
                GradNorm = gradNorm,
                TokensPerSecond = tokens / Math.Max(stepClock.Elapsed.TotalSeconds, 1e-9),
                EvalLoss = evalLoss,
            };
            if (Writes)
            {
                AppendMetrics(metrics);
                foreach (var sink in Sinks) sink.Step(metrics);
            }
            OnStep?.Invoke(metrics);
            if (save && Writes)
            {
                string dir = Checkpoints.Save(_out, state, _adapter, optimizer, _o.SaveTotalLimit);
                savedStep = state.Step;
                Log?.Invoke($"step {state.Step}: checkpoint {dir}");
            }
        }
        if (_val is not null)
        {
            lastEval = Evaluate();
            Log?.Invoke($"eval loss {lastEval:F6}");
            if (Writes)
            {
                RunDirectory.WriteFile(Path.Combine(_out, "eval.jsonl"), JsonSerializer.Serialize(new { step = state.Step, eval_loss = lastEval }) + "\n", append: true);
                foreach (var sink in Sinks) sink.Evaluated(state.Step, lastEval.Value);
            }
        }
        if (Writes)
        {
            SaveAdapter();
            foreach (var sink in Sinks) sink.Finished(state.Step);
        }
        if (Parallel is not null) Log?.Invoke(Parallel.Summary(optimizer.FlatGradients.numel()));
        return new TrainResult(state.Step, lastLoss, lastEval, clock.Elapsed.TotalSeconds, _out, startStep);
    }

    /// <summary>The final adapter; on a full disk the partial file goes and the error names the path and the bytes needed.</summary>
    void SaveAdapter()
    {
        try { _adapter.Save(_out); }
        catch (IOException e)
        {
            string partial = Path.Combine(_out, AdapterFile.WeightsFile + ".tmp");
            if (File.Exists(partial)) File.Delete(partial);
            long bytes = 4 * _adapter.parameters().Sum(t => t.numel());
            throw new MolaException($"{Path.Combine(_out, AdapterFile.WeightsFile)}: could not write the adapter ({RunLock.Reason(e)}); it needs about {bytes:N0} bytes");
        }
    }

    /// <summary>
    /// Forward and backward over the micro-batches of one optimizer step. The CE of each micro-batch
    /// is weighted by its share of the step's predicted tokens, so the accumulated gradient equals
    /// that of one big batch; the balance loss is averaged over micro-batches (as the original's
    /// gradient accumulation does: it is a per-forward statistic).
    /// Under mpirun each rank runs its share of the micro-batches with the whole step's weights, so that the sum over
    /// the ranks is the one-process gradient. <paramref name="dropoutSeed"/> (of a micro-batch's index) reseeds the
    /// generator before each.
    /// </summary>
    internal (double Loss, double Ce, double Aux, long Tokens) AccumulateGradients(List<List<TokenizedExample>> micro, Device device, Func<int, long>? dropoutSeed = null)
    {
        long predicted = micro.Sum(mb => mb.Sum(PredictedTokens));
        if (predicted == 0) throw new MolaException(n => $"a training batch has no tokens to learn (every label is -100): check {n("cutoff_len")} and {n("train_on_inputs")}");
        double loss = 0, ce = 0, aux = 0;
        long tokens = 0;
        _adapter.train();
        for (int j = 0; j < micro.Count; j++)
        {
            if (Parallel?.Owns(j) == false) continue;
            var mb = micro[j];
            if (dropoutSeed is not null) torch.manual_seed(dropoutSeed(j));
            using var scope = NewDisposeScope();
            using var batch = InstructionDataset.Collate(mb, device);
            double share = (double)mb.Sum(PredictedTokens) / predicted;
            double auxWeight = _adapter.Config.AuxLossCoef / micro.Count;
            Tensor ceLoss, auxLoss;
            if (_o.GradientCheckpointing)
                (ceLoss, auxLoss) = _adapter.CheckpointedBackward(batch.InputIds, batch.AttentionMask, batch.Labels, share, auxWeight);
            else
            {
                var output = _adapter.Forward(batch.InputIds, batch.AttentionMask, batch.Labels);   // disposed with the scope
                (ceLoss, auxLoss) = (output.CeLoss!, output.AuxLoss!);
            }
            var auxPart = auxLoss * auxWeight;
            // A micro-batch whose labels are all -100 has a NaN mean CE; it carries no CE weight.
            var total = share > 0 ? ceLoss * share + auxPart : auxPart;
            if (total.requires_grad) total.backward();   // checkpointing has done its backward already
            loss += total.item<float>();
            if (share > 0) ce += ceLoss.item<float>() * share;
            aux += auxLoss.item<float>() / micro.Count;
            tokens += batch.AttentionMask.sum().item<long>();
        }
        return (loss, ce, aux, tokens);
    }

    static long PredictedTokens(TokenizedExample e)
    {
        long n = 0;
        for (int t = 1; t < e.Labels.Length; t++) if (e.Labels[t] != Losses.IgnoreIndex) n++;
        return n;
    }

    /// <summary>Mean CE per predicted token over the validation split (dropout off).</summary>
    public double Evaluate()
    {
        if (_val is null) throw new InvalidOperationException("no validation split");
        _adapter.eval();
        double sum = 0;
        long count = 0;
        using (no_grad())
        {
            int index = 0;
            foreach (var chunk in _val.Examples.Chunk(_o.MicroBatchSize))
            {
                if (Parallel?.Owns(index++) == false) continue;
                using var scope = NewDisposeScope();
                using var batch = InstructionDataset.Collate(chunk, _adapter.Base.Device);
                var logits = _adapter.Base.Forward(batch.InputIds, batch.AttentionMask);
                var (s, n) = Losses.CausalLmSum(logits, batch.Labels);
                sum += s;
                count += n;
            }
        }
        _adapter.train();
        if (Parallel is not null)
        {
            var sums = Parallel.Sum([sum, count], "the evaluation loss sum");
            (sum, count) = (sums[0], (long)sums[1]);
        }
        return count == 0 ? double.NaN : sum / count;
    }

    /// <summary>Every rank begins at the same step from rank 0's adapter; each restored its optimizer state from the
    /// same checkpoint, which only a directory all of them read gives.</summary>
    void StartTogether(AdamW optimizer, long step)
    {
        var range = Parallel!.Max([step, -step], "the start of the run");
        if (range[0] != -range[1])
            throw new MolaException($"{_out}: the ranks resume from different steps ({-range[1]} to {range[0]}): every rank must see the same output directory and checkpoints");
        Parallel.Broadcast(optimizer.FlatParameters, "the broadcast of the adapter");
    }

    void AppendMetrics(StepMetrics m)
    {
        var o = new JsonObject
        {
            ["step"] = m.Step,
            ["epoch"] = Math.Round(m.Epoch, 4),
            ["loss"] = m.Loss,
            ["ce_loss"] = m.CeLoss,
            ["aux_loss"] = m.AuxLoss,
            ["lr"] = m.Lr,
            ["grad_norm"] = m.GradNorm,
            ["tokens_per_second"] = Math.Round(m.TokensPerSecond, 1),
        };
        if (m.EvalLoss is double e) o["eval_loss"] = e;
        RunDirectory.WriteFile(MetricsPath, o.ToJsonString() + "\n", append: true);
    }

    /// <summary>On resume, drop the lines of steps after the checkpoint (a killed run may have logged more, and may
    /// have left its last line half written). Any other line that is not a metrics line is an error naming it: the
    /// file is left as it is rather than cut short at that line.</summary>
    void TruncateMetrics(long step)
    {
        if (!File.Exists(MetricsPath)) return;
        var lines = File.ReadAllLines(MetricsPath);
        int last = Array.FindLastIndex(lines, l => !string.IsNullOrWhiteSpace(l));
        var keep = new List<string>();
        for (int i = 0; i <= last; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            long? lineStep = StepOf(lines[i]);
            if (lineStep is null && i == last) break;
            if (lineStep is null)
                throw new MolaException($"{MetricsPath}:{i + 1}: not a metrics line (expected a JSON object with a numeric \"step\"); fix or delete it to resume");
            if (lineStep > step) break;
            keep.Add(lines[i]);
        }
        File.WriteAllLines(MetricsPath, keep);
    }

    static long? StepOf(string line)
    {
        try { return JsonNode.Parse(line) is JsonObject o && o["step"] is JsonValue v && v.TryGetValue<long>(out var n) ? n : null; }
        catch (JsonException) { return null; }
    }
}
