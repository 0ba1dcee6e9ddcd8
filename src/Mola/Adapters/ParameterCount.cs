using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>Trainable parameters of one decoder layer's adapters. <see cref="Experts"/> and
/// <see cref="TopK"/> are null for plain LoRA, whose <see cref="Router"/> is 0.</summary>
public sealed record LayerParameters(int Layer, int? Experts, int? TopK, int Rank, long Lora, long Router)
{
    public long Total => checked(Lora + Router);
}

/// <summary>Exact parameter counts of a base model and an adapter on it.</summary>
public sealed record ParameterCounts(AdapterKind Kind, IReadOnlyList<string> Targets, long Base, IReadOnlyList<LayerParameters> Layers)
{
    /// <summary>LoRA A and B matrices of every expert (or of the one LoRA pair).</summary>
    public long Lora => Layers.Sum(l => l.Lora);
    public long Router => Layers.Sum(l => l.Router);
    /// <summary>All trainable parameters.</summary>
    public long Total => checked(Lora + Router);
    /// <summary>Trainable parameters as a percentage of the frozen base.</summary>
    public double Percent => 100.0 * Total / Base;
}

/// <summary>A rough peak-memory figure for training, in bytes (see <see cref="ParameterCount.EstimateTrainingMemory"/>).</summary>
public sealed record MemoryEstimate(
    string BaseDType, int MicroBatchSize, int SequenceLength,
    long BaseWeightsBytes, long AdapterWeightsBytes, long AdapterGradientsBytes, long OptimizerStateBytes, long ActivationBytes)
{
    public long TotalBytes => checked(BaseWeightsBytes + AdapterWeightsBytes + AdapterGradientsBytes + OptimizerStateBytes + ActivationBytes);
}

/// <summary>Parameter counts and memory figures from a <see cref="ModelConfig"/> alone: no weights are read.</summary>
public static class ParameterCount
{
    /// <summary>Parameters of the base model: embeddings, per layer q/k/v/o, gate/up/down and the two
    /// RMSNorms, the final norm, and lm_head unless it is tied to the embeddings. No biases (LLaMA, Mistral, Gemma have none).</summary>
    public static long Base(ModelConfig c)
    {
        long perLayer = TargetModules.All.Sum(m => Weight(c, m)) + 2L * c.HiddenSize;
        long embeddings = (long)c.VocabSize * c.HiddenSize;
        long head = c.TieWordEmbeddings ? 0 : embeddings;
        return embeddings + c.NumHiddenLayers * perLayer + c.HiddenSize + head;
    }

    /// <summary>MoLA: per layer L and target module (in, out), E_L experts of rank r_L, each
    /// <c>r_L * (in + out)</c> (A is r x in, B is out x r), plus a router of <c>E_L * in</c> (no bias).
    /// Top-k changes no count; it is checked against the experts and carried into the breakdown.</summary>
    public static ParameterCounts Mola(ModelConfig c, int[] experts, int[] topK, int[] rank, IReadOnlyList<string> targets)
    {
        CheckLength(c, experts, "experts");
        ExpertAllocation.Validate(experts, topK, rank);
        return Checked("the adapter's parameter count", () =>
        {
            var layers = Enumerable.Range(0, c.NumHiddenLayers).Select(l => new LayerParameters(
                l, experts[l], topK[l], rank[l],
                Lora: targets.Sum(m => checked((long)experts[l] * rank[l] * InPlusOut(c, m))),
                Router: targets.Sum(m => checked((long)experts[l] * TargetModules.Shape(c, m).In)))).ToArray();
            var counts = new ParameterCounts(AdapterKind.Mola, targets, Base(c), layers);
            _ = counts.Total;   // the sums overflow here, if anywhere
            return counts;
        });
    }

    /// <summary>Plain LoRA: per layer and target module <c>r_L * (in + out)</c>, no router.</summary>
    public static ParameterCounts Lora(ModelConfig c, int[] rank, IReadOnlyList<string> targets)
    {
        CheckLength(c, rank, "rank");
        for (int l = 0; l < rank.Length; l++)
            if (rank[l] < 1) throw new MolaException($"layer {l}: rank {rank[l]} (must be at least 1)");
        return Checked("the adapter's parameter count", () =>
        {
            var layers = Enumerable.Range(0, c.NumHiddenLayers).Select(l => new LayerParameters(
                l, null, null, rank[l], Lora: targets.Sum(m => checked((long)rank[l] * InPlusOut(c, m))), Router: 0)).ToArray();
            var counts = new ParameterCounts(AdapterKind.Lora, targets, Base(c), layers);
            _ = counts.Total;
            return counts;
        });
    }

    /// <summary>
    /// Peak memory of a training step, as an estimate (the allocator, CUDA context, fused kernels and
    /// the framework's own choices move the real figure).
    /// <list type="bullet">
    /// <item>base weights: <c>Base * bytes(dtype)</c> (frozen, no gradients or optimizer state);</item>
    /// <item>adapter weights, their gradients and AdamW's two moments, all float32: <c>4 + 4 + 8</c> bytes per trainable parameter;</item>
    /// <item>activations kept for the backward pass, <c>b * s</c> tokens (micro-batch x sequence length), per token and layer,
    /// in the base dtype: the two RMSNorms' inputs and outputs (4h); q, k, v, the rotated q and k and the attention
    /// output (3q + 3kv, plus 2q for k and v repeated to all heads under grouped-query attention); attention
    /// probabilities without a fused kernel (heads * s); the MLP's gate, activation, up and product (4i); per target
    /// module the dropout output (in) and the expert hidden states (E*r for MoLA, every expert; r for LoRA);
    /// and in float32 the router logits and probabilities (2E per module, MoLA only);</item>
    /// <item>once per token: the logits in the base dtype plus a float32 copy and its log-softmax for the loss: <c>V * (bytes + 8)</c>.</item>
    /// </list>
    /// No gradient checkpointing: every layer keeps its activations until the backward pass reaches it.
    /// </summary>
    public static MemoryEstimate EstimateTrainingMemory(ModelConfig c, ParameterCounts counts, ScalarType baseDType, int microBatchSize, int sequenceLength)
    {
        if (microBatchSize < 1) throw new MolaException(n => $"{n("micro_batch_size")}: {microBatchSize} (must be at least 1)");
        if (sequenceLength < 1) throw new MolaException(n => $"{n("cutoff_len")}: {sequenceLength} (must be at least 1)");
        return Checked(n => $"the memory estimate for {n("micro_batch_size")} {microBatchSize} x {n("cutoff_len")} {sequenceLength}",
            () =>
            {
                var m = Estimate(c, counts, baseDType, microBatchSize, sequenceLength);
                _ = m.TotalBytes;   // the total overflows here, if anywhere
                return m;
            });
    }

    static MemoryEstimate Estimate(ModelConfig c, ParameterCounts counts, ScalarType baseDType, int microBatchSize, int sequenceLength)
    {
        checked
        {
            long bytes = BytesPerElement(baseDType);
            long h = c.HiddenSize, i = c.IntermediateSize, q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim;
            long s = sequenceLength, tokens = (long)microBatchSize * sequenceLength;

            long baseElementsPerTokenLayer = 4 * h + 3 * q + 3 * kv + (kv != q ? 2 * q : 0) + c.NumAttentionHeads * s + 4 * i;
            long perTokenBytes = (long)c.VocabSize * (bytes + 8);
            foreach (var layer in counts.Layers)
            {
                long adapterElements = counts.Targets.Sum(m => TargetModules.Shape(c, m).In + (long)(layer.Experts ?? 1) * layer.Rank);
                long routerFloats = counts.Kind == AdapterKind.Mola ? counts.Targets.Count * 2L * layer.Experts!.Value : 0;
                perTokenBytes += bytes * (baseElementsPerTokenLayer + adapterElements) + 4 * routerFloats;
            }
            long trainable = counts.Total;
            return new MemoryEstimate(baseDType.ToString().ToLowerInvariant(), microBatchSize, sequenceLength,
                BaseWeightsBytes: counts.Base * bytes,
                AdapterWeightsBytes: 4 * trainable,
                AdapterGradientsBytes: 4 * trainable,
                OptimizerStateBytes: 8 * trainable,
                ActivationBytes: tokens * perTokenBytes);
        }
    }

    /// <summary>Refuses, before anything is allocated, what cannot fit in this machine's memory (physical, or the container's
    /// limit): libtorch would fail deep inside with a native trace, or the system would kill the process.</summary>
    /// <param name="what">What needs the memory, naming the options or keys that make it, e.g. "the adapter (--experts ...)".</param>
    public static void EnsureFitsInMemory(long bytes, string what, string remedy)
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new MolaException($"{what} needs {GiB(bytes)} of memory, more than this machine's {GiB(available)}: {remedy}");
    }

    static string GiB(long bytes) => (bytes / (1024.0 * 1024 * 1024)).ToString("0.0", System.Globalization.CultureInfo.InvariantCulture) + " GiB";

    /// <summary>Runs a computation in 64-bit integers; an overflow (sizes no machine has) becomes an error naming it.</summary>
    static T Checked<T>(string what, Func<T> compute) => Checked(_ => what, compute);

    /// <param name="what">What is computed, naming settings as <see cref="MolaException"/>'s message does.</param>
    static T Checked<T>(Func<Func<string, string>, string> what, Func<T> compute)
    {
        try { return compute(); }
        catch (OverflowException) { throw new MolaException(n => $"{what(n)} passes 2^63 (over 9.2e18): far more than any machine holds"); }
    }

    public static long BytesPerElement(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 => 2,
        _ => throw new MolaException(n => $"{n("dtype")}: {dtype} is not a base-weight dtype (expected float32, bfloat16 or float16)"),
    };

    static long Weight(ModelConfig c, string module)
    {
        var (input, output) = TargetModules.Shape(c, module);
        return (long)input * output;
    }

    static long InPlusOut(ModelConfig c, string module)
    {
        var (input, output) = TargetModules.Shape(c, module);
        return input + output;
    }

    static void CheckLength(ModelConfig c, int[] perLayer, string what)
    {
        if (perLayer.Length != c.NumHiddenLayers)
            throw new MolaException($"{what}: {perLayer.Length} values for a model with {c.NumHiddenLayers} layers (expected one per layer)");
    }
}
