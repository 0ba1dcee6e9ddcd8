using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>The gated MLP: <c>down(act(gate(x)) * up(x))</c>, SiLU for LLaMA/Mistral, tanh-GELU for Gemma.</summary>
public sealed class Mlp : nn.Module<Tensor, Tensor>
{
    public Linear gate_proj, up_proj, down_proj;
    readonly string _act;

    /// <summary>The config's <c>hidden_act</c>.</summary>
    public string Activation => _act;

    public Mlp(string name, ModelConfig c, ScalarType dtype, Device device) : base(name)
    {
        gate_proj = new Linear("gate_proj", c.HiddenSize, c.IntermediateSize, dtype, device);
        up_proj = new Linear("up_proj", c.HiddenSize, c.IntermediateSize, dtype, device);
        down_proj = new Linear("down_proj", c.IntermediateSize, c.HiddenSize, dtype, device);
        _act = c.HiddenAct;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var g = gate_proj.forward(x);
        var a = _act switch
        {
            "silu" => nn.functional.silu(g),
            "gelu" => nn.functional.gelu(g),
            _ => nn.functional.gelu(g, TorchSharp.Modules.GELU.Approximate.tanh),
        };
        return down_proj.forward(a * up_proj.forward(x)).MoveToOuterDisposeScope();
    }
}
