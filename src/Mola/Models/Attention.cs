using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>Grouped-query self-attention with rotary positions and an optional KV cache.</summary>
public sealed class Attention : nn.Module<Tensor, Tensor>
{
    public Linear q_proj, k_proj, v_proj, o_proj;
    readonly int _heads, _kvHeads, _headDim;

    public int Heads => _heads;
    public int KeyValueHeads => _kvHeads;
    public int HeadDim => _headDim;

    public Attention(string name, ModelConfig c, ScalarType dtype, Device device) : base(name)
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        q_proj = new Linear("q_proj", c.HiddenSize, _heads * _headDim, dtype, device);
        k_proj = new Linear("k_proj", c.HiddenSize, _kvHeads * _headDim, dtype, device);
        v_proj = new Linear("v_proj", c.HiddenSize, _kvHeads * _headDim, dtype, device);
        o_proj = new Linear("o_proj", _heads * _headDim, c.HiddenSize, dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("call Forward(x, context)");

    /// <param name="x">[B, T, hidden]</param>
    public Tensor Forward(Tensor x, ForwardContext ctx, int layer)
    {
        using var scope = NewDisposeScope();
        long B = x.shape[0], T = x.shape[1];
        var q = q_proj.forward(x).view(B, T, _heads, _headDim).transpose(1, 2);
        var k = k_proj.forward(x).view(B, T, _kvHeads, _headDim).transpose(1, 2);
        var v = v_proj.forward(x).view(B, T, _kvHeads, _headDim).transpose(1, 2);
        q = Rotary.Apply(q, ctx.Cos, ctx.Sin);
        k = Rotary.Apply(k, ctx.Cos, ctx.Sin);
        if (ctx.Cache is not null) (k, v) = ctx.Cache.Append(layer, k, v);
        Tensor o;
        if (_kvHeads != _heads && T == 1 && ctx.Mask is null)
        {
            // One new token that sees every key: the query heads sharing a key head attend as that head's queries,
            // so the cache is read in place instead of copied once per query head at every token.
            o = nn.functional.scaled_dot_product_attention(q.reshape(B, _kvHeads, _heads / _kvHeads, _headDim), k, v);
        }
        else
        {
            if (_kvHeads != _heads)
            {
                k = k.repeat_interleave(_heads / _kvHeads, dim: 1);
                v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
            }
            o = nn.functional.scaled_dot_product_attention(q, k, v, ctx.Mask, is_casual: ctx.Causal).transpose(1, 2);
        }
        o = o.reshape(B, T, _heads * _headDim);
        return o_proj.forward(o).MoveToOuterDisposeScope();
    }
}
