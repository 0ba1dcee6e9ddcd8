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

/// <summary>Parameter counts from a <see cref="ModelConfig"/> alone: no weights are read (the memory they take to train:
/// <see cref="Training.MemoryPlan"/>).</summary>
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
