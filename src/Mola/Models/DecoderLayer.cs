using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>A pre-norm decoder block: <c>x + attn(norm(x))</c>, then <c>x + mlp(norm(x))</c>.</summary>
public sealed class DecoderLayer : nn.Module<Tensor, Tensor>
{
    public RmsNorm input_layernorm, post_attention_layernorm;
    public Attention self_attn;
    public Mlp mlp;
    readonly int _index;

    public DecoderLayer(int index, ModelConfig c, ScalarType dtype, Device device) : base(index.ToString())
    {
        _index = index;
        input_layernorm = new RmsNorm("input_layernorm", c.HiddenSize, c.RmsNormEps, c.IsGemma, dtype, device);
        post_attention_layernorm = new RmsNorm("post_attention_layernorm", c.HiddenSize, c.RmsNormEps, c.IsGemma, dtype, device);
        self_attn = new Attention("self_attn", c, dtype, device);
        mlp = new Mlp("mlp", c, dtype, device);
        RegisterComponents();
    }

    /// <summary>Whether one token of batch-1 decoding may take <see cref="OneTokenLayer"/> (tests turn it off to compare).</summary>
    internal bool OneTokenPath { get; set; } = true;

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("call Forward(x, context)");

    public Tensor Forward(Tensor x, ForwardContext ctx)
    {
        if (OneTokenLayer.Applies(this, x, ctx)) return OneTokenLayer.Forward(this, x, ctx, _index);
        using var scope = NewDisposeScope();
        using (var n = input_layernorm.forward(x))
            x = x + self_attn.Forward(n, ctx, _index);
        using (var n = post_attention_layernorm.forward(x))
            x = x + mlp.forward(n);
        return x.MoveToOuterDisposeScope();
    }
}
