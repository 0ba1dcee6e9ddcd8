using Mola.Models;

namespace Mola.Adapters;

/// <summary>The seven linear maps of a decoder layer an adapter can wrap, and their shapes.</summary>
public static class TargetModules
{
    /// <summary>All seven, in checkpoint order (attention, then MLP); the paper adapts all of them.</summary>
    public static readonly IReadOnlyList<string> All = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>Reads a comma (or space) separated list of module names, or <c>all</c>; returns them in checkpoint order.</summary>
    public static string[] Parse(string list, string what = "target_modules")
    {
        var names = (list ?? "").Split([',', ' '], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (names.Length == 0)
            throw new MolaException(n => $"{n(what)}: empty list (expected some of {string.Join(", ", All)}, or all)");
        if (names is ["all"]) return [.. All];
        foreach (var name in names)
        {
            if (!All.Contains(name))
                throw new MolaException(n => $"{n(what)}: unknown module \"{name}\" (expected some of {string.Join(", ", All)}, or all)");
            if (names.Count(n => n == name) > 1)
                throw new MolaException(n => $"{n(what)}: \"{name}\" is listed twice");
        }
        return All.Where(names.Contains).ToArray();
    }

    /// <summary>The submodule holding a target in a decoder layer: <c>self_attn</c> or <c>mlp</c>.</summary>
    public static string Parent(string module) => module is "q_proj" or "k_proj" or "v_proj" or "o_proj" ? "self_attn" : "mlp";

    /// <summary>Input and output width of a target module (grouped-query attention and Gemma's
    /// head_dim make q/k/v/o differ from hidden x hidden).</summary>
    public static (int In, int Out) Shape(ModelConfig c, string module) => module switch
    {
        "q_proj" => (c.HiddenSize, c.NumAttentionHeads * c.HeadDim),
        "k_proj" or "v_proj" => (c.HiddenSize, c.NumKeyValueHeads * c.HeadDim),
        "o_proj" => (c.NumAttentionHeads * c.HeadDim, c.HiddenSize),
        "gate_proj" or "up_proj" => (c.HiddenSize, c.IntermediateSize),
        "down_proj" => (c.IntermediateSize, c.HiddenSize),
        _ => throw new ArgumentException($"not a target module: {module}", nameof(module)),
    };
}
