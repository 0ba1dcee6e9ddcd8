using System.Globalization;
using Mola.Adapters;
using Mola.Models;
using Mola.Platform;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>
/// The planned peak resident memory of a training run, in bytes, from config.json and the run's settings alone
/// (before anything loads). Each term counts the tensors that are alive at the peak: bench/NOTES.md ("Memory
/// planner") has the measurements behind each one and how the total compares with measured peaks.
/// </summary>
public sealed record MemoryPlan(
    string BaseDType, int MicroBatchSize, int SequenceLength, bool GradientCheckpointing,
    long BaseWeightsBytes, long AdapterWeightsBytes, long AdapterGradientsBytes, long OptimizerStateBytes,
    long ActivationBytes, long HeadBytes, long RuntimeBytes)
{
    public long TotalBytes => checked(BaseWeightsBytes + AdapterWeightsBytes + AdapterGradientsBytes + OptimizerStateBytes
        + ActivationBytes + HeadBytes + RuntimeBytes);

    /// <summary>What the .NET runtime, libtorch, the tokenizer and the data hold whatever the model (measured: a
    /// 3-layer fixture model's whole training run peaks at this).</summary>
    public const long Runtime = 300L << 20;

    /// <summary>
    /// The plan for micro-batches of <paramref name="microBatchSize"/> sequences of <paramref name="sequenceLength"/> tokens.
    /// <list type="bullet">
    /// <item>base weights: every parameter in the base dtype (mapped file pages when the checkpoint has that dtype,
    /// converted copies otherwise: resident either way);</item>
    /// <item>the adapter: float32 weights, gradients and AdamW's two moments, 16 bytes a trainable parameter;</item>
    /// <item>activations: what each layer saves for its backward pass, per token (<see cref="LayerBytesPerToken"/>), for
    /// every layer; with gradient checkpointing, each layer's input (the base dtype, hidden wide) plus one layer's
    /// activations, recomputed;</item>
    /// <item>the loss head: logits in the base dtype, their float32 copy and log-softmax, and the two float32 gradients
    /// of its backward pass, per token <c>V * (bytes + 16)</c>, on top of the activations with or without checkpointing.</item>
    /// </list>
    /// </summary>
    public static MemoryPlan Estimate(ModelConfig c, ParameterCounts counts, ScalarType baseDType, int microBatchSize, int sequenceLength,
        bool gradientCheckpointing, double dropout)
    {
        if (microBatchSize < 1) throw new MolaException($"micro-batch size {microBatchSize} (must be at least 1)");
        if (sequenceLength < 1) throw new MolaException($"cutoff length {sequenceLength} (must be at least 1)");
        try
        {
            checked
            {
                long bytes = ParameterCount.BytesPerElement(baseDType);
                long tokens = (long)microBatchSize * sequenceLength;
                var perLayer = counts.Layers.Select(l => tokens * LayerBytesPerToken(c, counts, l, bytes, dropout > 0)).ToArray();
                long head = tokens * c.VocabSize * (bytes + 16);
                // With checkpointing the head runs before the first recompute, yet measured peaks are only matched when
                // both count (bench/NOTES.md: taking the larger of the two was 7-17% under): the head is counted whole.
                long activations = gradientCheckpointing
                    ? counts.Layers.Count * tokens * c.HiddenSize * bytes + perLayer.Max()
                    : perLayer.Sum();
                long trainable = counts.Total;
                var plan = new MemoryPlan(baseDType.ToString().ToLowerInvariant(), microBatchSize, sequenceLength, gradientCheckpointing,
                    BaseWeightsBytes: counts.Base * bytes,
                    AdapterWeightsBytes: 4 * trainable,
                    AdapterGradientsBytes: 4 * trainable,
                    OptimizerStateBytes: 8 * trainable,
                    ActivationBytes: activations,
                    HeadBytes: head,
                    RuntimeBytes: Runtime);
                _ = plan.TotalBytes;   // the total overflows here, if anywhere
                return plan;
            }
        }
        catch (OverflowException)
        {
            throw new MolaException($"the memory plan for micro-batch {microBatchSize} x {sequenceLength} tokens passes 2^63 bytes: far more than any machine holds");
        }
    }

    /// <summary>
    /// Bytes one decoder layer saves for its backward pass, per token (b: bytes of the base dtype), as counted on the
    /// tensors autograd keeps (bench/NOTES.md):
    /// <list type="bullet">
    /// <item>the two RMSNorms' float32 inputs: <c>2 * 4h</c>;</item>
    /// <item>attention: q, k and v (repeated to every head), the kernel's output and its working copies, measured at
    /// seven q-widths: <c>7 q b</c>;</item>
    /// <item>the MLP's gate, activation and up outputs: <c>3 i b</c>;</item>
    /// <item>the adapters' float32 input, one per distinct input (q, k, v share one, gate and up one): <c>4 in</c>;
    /// with dropout, per module its float32 mask and output: <c>8 in</c>;</item>
    /// <item>per module the expert products [E*r] twice and the routing tensors: <c>4 (2 E r + 5 E) + 24 k</c> for MoLA,
    /// <c>4 r</c> for LoRA.</item>
    /// </list>
    /// </summary>
    public static long LayerBytesPerToken(ModelConfig c, ParameterCounts counts, LayerParameters layer, long bytes, bool dropout)
    {
        long h = c.HiddenSize, i = c.IntermediateSize, q = (long)c.NumAttentionHeads * c.HeadDim;
        long total = 2 * 4 * h + 7 * q * bytes + 3 * i * bytes;
        var targets = counts.Targets;
        var inputs = targets.Select(m => m switch
        {
            "q_proj" or "k_proj" or "v_proj" => "attention",
            "gate_proj" or "up_proj" => "mlp",
            _ => m,
        }).Distinct();
        total += inputs.Sum(name => 4L * (name is "attention" or "mlp" ? h : TargetModules.Shape(c, name).In));
        foreach (var m in targets)
        {
            if (dropout) total += 8L * TargetModules.Shape(c, m).In;
            total += counts.Kind == AdapterKind.Mola
                ? 4L * (2L * layer.Experts!.Value * layer.Rank + 5L * layer.Experts.Value) + 24L * layer.TopK!.Value
                : 4L * layer.Rank;
        }
        return total;
    }

    /// <summary>One line: the total and its largest parts.</summary>
    public string Summary() =>
        $"{GiB(TotalBytes)} (base weights {GiB(BaseWeightsBytes)}, adapter with gradients and AdamW moments " +
        $"{GiB(AdapterWeightsBytes + AdapterGradientsBytes + OptimizerStateBytes)}, activations {GiB(ActivationBytes)}, loss head {GiB(HeadBytes)})";

    /// <summary>Refuses, before anything is allocated, what cannot fit in the memory this process has available:
    /// libtorch would fail deep inside with a native trace, or the system would kill the process.</summary>
    /// <param name="what">What needs the memory, naming the options or keys that make it, e.g. "the layer benchmark (--hidden ...)".</param>
    public static void EnsureFits(long bytes, string what, string remedy)
    {
        var available = AvailableMemory.Read();
        if (bytes > available.Bytes)
            throw new MolaException($"{what} needs {GiB(bytes)} of memory, more than the {GiB(available.Bytes)} {available.Source}: {remedy}");
    }

    public static string GiB(long bytes) => (bytes / (1024.0 * 1024 * 1024)).ToString("0.00", CultureInfo.InvariantCulture) + " GiB";
}
