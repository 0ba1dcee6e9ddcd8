using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// How an adapter computes over a bfloat16 or float16 base. <see cref="Mixed"/> (the default) is what autocast gives
/// the original MoLA code (HF Trainer <c>fp16=True</c>) and PEFT under <c>bf16=True</c>: the parameters, their gradients
/// and the optimizer's state stay float32 (master weights), the router, A and B products run in the base dtype (the
/// weights cast per forward pass; the cast's backward hands float32 gradients back), the router's softmax and top-k
/// in float32 on the logits. <see cref="Float32"/> runs the products in float32 on a float32 copy of the input. Over a
/// float32 base the two are the same computation.
/// </summary>
public enum AdapterPrecision { Mixed, Float32 }

public static class AdapterPrecisions
{
    /// <summary>Reads <c>mixed</c> or <c>float32</c> (any case).</summary>
    public static AdapterPrecision Parse(string name, string what = "adapter_precision") => name.Trim().ToLowerInvariant() switch
    {
        "mixed" => AdapterPrecision.Mixed,
        "float32" => AdapterPrecision.Float32,
        _ => throw new MolaException(n => $"{n(what)}: unknown adapter precision \"{name}\" (expected mixed or float32)"),
    };

    public static string Name(this AdapterPrecision precision) => precision == AdapterPrecision.Mixed ? "mixed" : "float32";

    /// <summary>What the adapter computes over a base of <paramref name="baseType"/>: mixed only over bfloat16 or float16.</summary>
    public static AdapterPrecision Effective(this AdapterPrecision precision, ScalarType baseType) =>
        baseType is ScalarType.BFloat16 or ScalarType.Float16 ? precision : AdapterPrecision.Float32;

    /// <summary>The adapter's input rows [N, in] in the dtype its products run in: the base's own rows under mixed
    /// precision over a bfloat16/float16 base, otherwise the float32 copy that the modules reading this input share.</summary>
    public static Tensor ProductRows(this AdapterPrecision precision, Tensor x, long inFeatures) =>
        precision.Effective(x.dtype) == AdapterPrecision.Mixed ? x.reshape(-1, inFeatures) : SharedInputCast.Float32Rows(x, inFeatures);

    /// <summary>A float32 adapter weight in the products' dtype <paramref name="type"/> (cast per forward pass, as
    /// autocast does; autograd sends the gradient back to the float32 parameter as float32).</summary>
    public static Tensor In(this Tensor weight, ScalarType type) => weight.dtype == type ? weight : weight.to(type);
}
