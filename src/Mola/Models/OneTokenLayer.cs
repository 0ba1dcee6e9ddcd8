using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>
/// A decoder layer for one new token of one sequence over bfloat16 weights (batch-1 decoding), in one pass over native
/// memory: the norms, the q/k/v and gate/up products (each set in one <see cref="DecodeTeam"/> job, as they read the
/// same input), the rotary, the key and value written into the cache in place, attention over the cache, SiLU times
/// up, and the residuals. The same arithmetic as <see cref="DecoderLayer.Forward"/>'s libtorch operations, with their
/// bfloat16 roundings after each step, but for two: a norm's sum of squares (<see cref="RmsNorm"/>) and the attention,
/// whose weights and weighted sum stay in float32 until its output is rounded once (libtorch's flash kernel rounds the
/// weights to bfloat16 before the sum). A MoLA adapter on a map adds its routed experts' output into that map's
/// bfloat16 outputs, as its own one-token path does (<see cref="IOneTokenAdapter"/>). Tested against the libtorch
/// path, with and without an adapter: bfloat16 steps apart, the same tokens.
/// Why: in a token of the 1.1B shape the layers' ~700 small libtorch operations and their tensors cost ~15% of the
/// caller's time (bench/NOTES.md), beside products that read the weights at the memory's rate.
/// </summary>
static class OneTokenLayer
{
    /// <summary>Whether <see cref="Forward"/> computes this call: one bfloat16 token on the CPU without autograd, a
    /// cache, every key visible (no padding or window mask), no adapter on the layer's maps but ones that add their
    /// one-token output themselves (<see cref="IOneTokenAdapter"/>: MoLA's), SiLU, 512-bit vectors, a head size that is
    /// a multiple of 32.</summary>
    public static bool Applies(DecoderLayer layer, Tensor x, ForwardContext ctx)
    {
        var (attn, mlp) = (layer.self_attn, layer.mlp);
        if (!layer.OneTokenPath || !Vector512.IsHardwareAccelerated || ctx.Cache is null || ctx.Mask is not null || mlp.Activation != "silu"
            || attn.HeadDim % 32 != 0 || is_grad_enabled())
            return false;
        Linear[] maps = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj];
        return x.dtype == ScalarType.BFloat16 && x.device_type == DeviceType.CPU && x.numel() == x.shape[^1] && x.is_contiguous()
            && ctx.Cos.dtype == ScalarType.BFloat16 && ctx.Cos.numel() == attn.HeadDim && ctx.Sin.numel() == attn.HeadDim
            && ctx.Cos.is_contiguous() && ctx.Sin.is_contiguous()
            && layer.input_layernorm.weight.dtype == ScalarType.BFloat16 && layer.post_attention_layernorm.weight.dtype == ScalarType.BFloat16
            && maps.All(m => m.Adapter is null or IOneTokenAdapter { OneTokenReady: true } && m.weight.dtype == ScalarType.BFloat16 && m.weight.device_type == DeviceType.CPU
                && m.weight.is_contiguous());
    }

    /// <summary>The layer's output [1, 1, hidden] for <paramref name="x"/> [1, 1, hidden]; the token's key and value
    /// are appended to the cache as <see cref="KvCache.Append"/> would.</summary>
    public static unsafe Tensor Forward(DecoderLayer layer, Tensor x, ForwardContext ctx, int index)
    {
        var (attn, mlp) = (layer.self_attn, layer.mlp);
        int D = (int)x.shape[^1], H = attn.Heads, KV = attn.KeyValueHeads, hd = attn.HeadDim, I = mlp.gate_proj.OutFeatures;
        var y = empty(x.shape, ScalarType.BFloat16);
        var (cacheK, cacheV, position) = ctx.Cache!.AppendOne(index, KV, hd, ScalarType.BFloat16, x.device);
        long capacity = cacheK.shape[2];
        // One scratch block: the normed row, q, k, v, rotated q and k, attention's output, a product's output, gate, up;
        // then an input row in float32 for adapters.
        long size = 2L * D + 3L * H * hd + 3L * KV * hd + 2L * I, floats = Math.Max(Math.Max(D, H * hd), I);
        var scratch = (ushort*)NativeMemory.Alloc((nuint)(size * sizeof(ushort) + floats * sizeof(float)));
        try
        {
            ushort* normed = scratch, q = normed + D, k = q + H * hd, v = k + KV * hd, qr = v + KV * hd, kr = qr + H * hd;
            ushort* o = kr + KV * hd, product = o + H * hd, gate = product + D, up = gate + I;
            float* wide = (float*)(scratch + size);
            ushort* xs = (ushort*)Bf16Gemv.Address(x), ys = (ushort*)Bf16Gemv.Address(y);
            ushort* cos = (ushort*)Bf16Gemv.Address(ctx.Cos), sin = (ushort*)Bf16Gemv.Address(ctx.Sin);
            ushort* keys = (ushort*)Bf16Gemv.Address(cacheK), values = (ushort*)Bf16Gemv.Address(cacheV);

            // x + attn(norm(x))
            layer.input_layernorm.OneRow(xs, normed);
            Project(normed, D, wide, (attn.q_proj, (nint)q), (attn.k_proj, (nint)k), (attn.v_proj, (nint)v));
            Rotary.OneToken(q, cos, sin, qr, H, hd);
            Rotary.OneToken(k, cos, sin, kr, KV, hd);
            for (int h = 0; h < KV; h++)
            {
                long slot = (h * capacity + position) * hd;
                new Span<ushort>(kr + h * hd, hd).CopyTo(new Span<ushort>(keys + slot, hd));
                new Span<ushort>(v + h * hd, hd).CopyTo(new Span<ushort>(values + slot, hd));
            }
            Attend(qr, keys, values, capacity, position + 1, H, KV, hd, o);
            Project(o, H * hd, wide, (attn.o_proj, (nint)product));
            Add(xs, product, ys, D);

            // x + down(silu(gate(norm(x))) * up(norm(x)))
            layer.post_attention_layernorm.OneRow(ys, normed);
            void Activate(long from, long to)
            {
                for (long i = from; i < to; i++)   // silu rounded, then the product rounded: libtorch's two bfloat16 operations
                {
                    float g = Bf16Gemv.Widen(gate[i]);
                    gate[i] = Bf16Gemv.Round(Bf16Gemv.Widen(Bf16Gemv.Round(g / (1f + MathF.Exp(-g)))) * Bf16Gemv.Widen(up[i]));
                }
            }
            if (mlp.gate_proj.Adapter is null && mlp.up_proj.Adapter is null)
                Bf16Gemv.MultiplyTogether(normed, D, Into(mlp.gate_proj, (nint)gate), Into(mlp.up_proj, (nint)up), Activate);
            else
            {
                Project(normed, D, wide, (mlp.gate_proj, (nint)gate), (mlp.up_proj, (nint)up));
                Activate(0, I);
            }
            Project(gate, I, wide, (mlp.down_proj, (nint)product));
            Add(ys, product, ys, D);
        }
        finally
        {
            NativeMemory.Free(scratch);
        }
        return y;
    }

    static Bf16Gemv.Product Into(Linear map, nint y) => new(Bf16Gemv.Address(map.weight), y, map.OutFeatures);

    /// <summary>The maps that read the input row <paramref name="x"/> (<paramref name="n"/> long), each into its bfloat16
    /// outputs: their base products in one team job, then the adapters of those that have one add their outputs, reading
    /// x as float32 (widened once into <paramref name="wide"/>).</summary>
    static unsafe void Project(ushort* x, int n, float* wide, params (Linear Map, nint Y)[] maps)
    {
        Bf16Gemv.MultiplyPairs(x, n, [.. maps.Select(m => Into(m.Map, m.Y))]);
        bool widened = false;
        foreach (var (map, y) in maps)
        {
            if (map.Adapter is not IOneTokenAdapter adapter) continue;
            if (!widened)
            {
                for (int i = 0; i < n; i++) wide[i] = Bf16Gemv.Widen(x[i]);
                widened = true;
            }
            adapter.AddOneToken(wide, (ushort*)y);
        }
    }

    /// <summary>a + b rounded to bfloat16, as libtorch adds two bfloat16 tensors (<paramref name="sum"/> may be <paramref name="a"/>).</summary>
    static unsafe void Add(ushort* a, ushort* b, ushort* sum, int n)
    {
        for (int i = 0; i < n; i++) sum[i] = Bf16Gemv.Round(Bf16Gemv.Widen(a[i]) + Bf16Gemv.Widen(b[i]));
    }

    /// <summary>
    /// Attention of one token's <paramref name="heads"/> query heads over the first <paramref name="length"/> positions
    /// of the cache (<paramref name="keys"/>, <paramref name="values"/>: [kv_heads, capacity, head_dim]), the query heads
    /// that share a key head together (each key and value read once for them), one key head a team chunk.
    /// softmax(q k^T / sqrt(head_dim)) v in float32, rounded to bfloat16 once, into <paramref name="o"/> [heads, head_dim].
    /// </summary>
    static unsafe void Attend(ushort* q, ushort* keys, ushort* values, long capacity, long length, int heads, int kvHeads, int hd, ushort* o)
    {
        int group = heads / kvHeads;
        float scale = 1f / MathF.Sqrt(hd);
        DecodeTeam.Run(kvHeads, Math.Max(1, get_num_threads()), h =>
            AttendGroup(q + (long)h * group * hd, keys + h * capacity * hd, values + h * capacity * hd, length, group, hd, scale,
                o + (long)h * group * hd));
    }

    /// <summary>
    /// One key head's query heads. Keys, values and queries are read as 32-bit words of two bfloat16 each, the even
    /// element the word shifted left by 16 and the odd one its high half (as <see cref="Bf16Gemv"/> reads weights), so
    /// the queries are split once into even and odd float32 halves and the outputs are summed in the same halves.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe void AttendGroup(ushort* q, ushort* keys, ushort* values, long length, int group, int hd, float scale, ushort* o)
    {
        int half = hd / 2, vectors = half / 16;   // 16 words (32 elements) a vector
        long floats = 2L * group * half + group * length + 2L * group * half;
        var block = (float*)NativeMemory.Alloc((nuint)(floats * sizeof(float)));
        try
        {
            float* qEven = block, qOdd = qEven + group * half, scores = qOdd + group * half;
            float* outEven = scores + group * length, outOdd = outEven + group * half;
            for (int i = 0; i < group * half; i++)
            {
                qEven[i] = Bf16Gemv.Widen(q[2 * i]);
                qOdd[i] = Bf16Gemv.Widen(q[2 * i + 1]);
                outEven[i] = outOdd[i] = 0;
            }
            var high = Vector512.Create(0xFFFF0000u);
            for (long j = 0; j < length; j++)
            {
                uint* key = (uint*)(keys + j * hd);
                for (int g = 0; g < group; g++)
                {
                    Vector512<float> e = default, d = default;
                    for (int m = 0; m < vectors; m++)
                    {
                        var u = Vector512.Load(key + 16 * m);
                        e = Vector512.FusedMultiplyAdd(Vector512.ShiftLeft(u, 16).AsSingle(), Vector512.Load(qEven + g * half + 16 * m), e);
                        d = Vector512.FusedMultiplyAdd((u & high).AsSingle(), Vector512.Load(qOdd + g * half + 16 * m), d);
                    }
                    scores[g * length + j] = Vector512.Sum(e + d) * scale;
                }
            }
            Span<float> total = stackalloc float[group];
            for (int g = 0; g < group; g++)
            {
                float* s = scores + g * length;
                float max = float.NegativeInfinity;
                for (long j = 0; j < length; j++) max = MathF.Max(max, s[j]);
                float sum = 0;
                for (long j = 0; j < length; j++) sum += s[j] = MathF.Exp(s[j] - max);
                total[g] = sum;
            }
            for (long j = 0; j < length; j++)
            {
                uint* value = (uint*)(values + j * hd);
                for (int g = 0; g < group; g++)
                {
                    var p = Vector512.Create(scores[g * length + j]);
                    for (int m = 0; m < vectors; m++)
                    {
                        var u = Vector512.Load(value + 16 * m);
                        float* e = outEven + g * half + 16 * m, d = outOdd + g * half + 16 * m;
                        Vector512.FusedMultiplyAdd(Vector512.ShiftLeft(u, 16).AsSingle(), p, Vector512.Load(e)).Store(e);
                        Vector512.FusedMultiplyAdd((u & high).AsSingle(), p, Vector512.Load(d)).Store(d);
                    }
                }
            }
            for (int g = 0; g < group; g++)
                for (int i = 0; i < half; i++)
                {
                    o[g * hd + 2 * i] = Bf16Gemv.Round(outEven[g * half + i] / total[g]);
                    o[g * hd + 2 * i + 1] = Bf16Gemv.Round(outOdd[g * half + i] / total[g]);
                }
        }
        finally
        {
            NativeMemory.Free(block);
        }
    }
}
