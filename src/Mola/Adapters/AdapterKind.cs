namespace Mola.Adapters;

/// <summary>The two adapters the tool trains: MoLA (a mixture of LoRA experts with a router per
/// module) and plain LoRA, the paper's baseline.</summary>
public enum AdapterKind { Mola, Lora }

public static class AdapterKinds
{
    /// <summary>Reads <c>mola</c> or <c>lora</c> (any case; also PEFT's <c>MOLA</c>/<c>LORA</c>).</summary>
    public static AdapterKind Parse(string name, string what = "adapter_kind") => name.Trim().ToLowerInvariant() switch
    {
        "mola" => AdapterKind.Mola,
        "lora" => AdapterKind.Lora,
        _ => throw new MolaException(n => $"{n(what)}: unknown adapter kind \"{name}\" (expected mola or lora)"),
    };

    public static string Name(this AdapterKind kind) => kind == AdapterKind.Mola ? "mola" : "lora";
}
