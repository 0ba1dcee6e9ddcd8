using Mola.Models;
using TorchSharp;
using TorchSharp.Modules;
using System.Runtime.Intrinsics;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// A mixture of LoRA experts around one frozen linear map (MoLA):
/// <c>y = W x + sum over e in TopK(p) of w_e * (alpha / r) * B_e A_e dropout(x)</c>,
/// <c>p = softmax(W_router x)</c> in float32 on the input before dropout, <c>w</c> = the top-k of
/// <c>p</c> renormalised to sum 1. Adapter weights are float32 whatever the base dtype; over a bfloat16/float16 base
/// the batched path's products run in the base dtype by default (<see cref="AdapterPrecision"/>).
/// Parameters are stored stacked: <c>lora_A</c> [E*r, in] (expert e = rows e*r..(e+1)*r) and
/// <c>lora_B</c> [out, E*r], so the fast path is three matrix products for all experts.
/// </summary>
public sealed class MolaLayer : nn.Module<Tensor, Tensor>, IRoutedLayer, Models.IOneTokenAdapter
{
    public Parameter router;   // [E, in]
    public Parameter lora_A;   // [E*r, in]
    public Parameter lora_B;   // [out, E*r]

    public int Layer { get; }
    public string Module { get; }
    public int NumExperts { get; }
    public int TopK { get; }
    public int Rank { get; }
    public double Scaling { get; }
    public double DropoutP { get; }
    public int InFeatures { get; }
    public int OutFeatures { get; }

    /// <summary>When true, the faithful port of the original per-expert loop runs instead of the fast path.</summary>
    public bool UseLoopPath { get; set; }

    /// <summary>Where this layer's router logits [N, E] go during a forward pass (for the balance loss); null: nowhere.</summary>
    public Action<IRoutedLayer, Tensor>? RouterLogitsSink { get; set; }

    /// <summary>The layers of the same decoder layer that read this one's input (q, k, v; gate, up), routed as one in
    /// training; null: this layer routes alone.</summary>
    public MolaSiblings? Siblings { get; set; }

    /// <summary>Routing statistics hook; null (the default) costs nothing.</summary>
    public IRoutingObserver? Observer { get; set; }

    /// <summary>The batched path's product dtype over a bfloat16/float16 base; the loop port and
    /// <see cref="OneToken"/> compute in float32 either way.</summary>
    public AdapterPrecision Precision { get; set; }

    public MolaLayer(int layer, string module, int inFeatures, int outFeatures, int experts, int topK, int rank, double alpha, double dropout, Device device)
        : base($"{layer}_{module}")
    {
        Layer = layer;
        Module = module;
        NumExperts = experts;
        TopK = topK;
        Rank = rank;
        Scaling = alpha / rank;
        DropoutP = dropout;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        router = new Parameter(torch.empty(experts, inFeatures, ScalarType.Float32, device));
        lora_A = new Parameter(torch.empty(experts * rank, inFeatures, ScalarType.Float32, device));
        lora_B = new Parameter(torch.empty(outFeatures, experts * rank, ScalarType.Float32, device));
        RegisterComponents();
        ResetParameters();
    }

    /// <summary>Router and A like <c>nn.Linear</c> (Kaiming-uniform, a = sqrt 5), B zero: a fresh adapter changes nothing.
    /// The stacked A has the same fan-in as each expert's, so one call draws the same distribution.</summary>
    public void ResetParameters()
    {
        using var _ = torch.no_grad();
        nn.init.kaiming_uniform_(router, a: Math.Sqrt(5));
        nn.init.kaiming_uniform_(lora_A, a: Math.Sqrt(5));
        nn.init.zeros_(lora_B);
    }

    /// <summary>Expert e's A [r, in] (a view of the stacked parameter).</summary>
    public Tensor ExpertA(int e) => lora_A.narrow(0, (long)e * Rank, Rank);

    /// <summary>Expert e's B [out, r] (a view of the stacked parameter).</summary>
    public Tensor ExpertB(int e) => lora_B.narrow(1, (long)e * Rank, Rank);

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("MolaLayer wraps a Linear: call Forward(x, baseLayer)");

    /// <summary>The router, then each expert's A and B (views of the stacked parameters).</summary>
    public IEnumerable<(string Name, Tensor Tensor)> PeftTensors(string prefix)
    {
        yield return (AdapterFile.Router(prefix), router);
        for (int e = 0; e < NumExperts; e++)
        {
            yield return (AdapterFile.LoraA(prefix, e), ExpertA(e));
            yield return (AdapterFile.LoraB(prefix, e), ExpertB(e));
        }
    }

    /// <summary>Refused: the experts a token uses depend on the token, so no single weight holds them.</summary>
    public void Merge(Models.Linear baseLayer) => throw new MolaException("only LoRA adapters can be merged (a MoLA adapter routes per token)");

    public void Unmerge(Models.Linear baseLayer) { }

    /// <summary>Tests force the relayout of <see cref="FastForward"/> on (true) or off (false); null: by token count.</summary>
    internal bool? Relayout { get; set; }

    public Tensor Forward(Tensor x, Models.Linear baseLayer)
    {
        using var scope = NewDisposeScope();
        var x2 = x.reshape(-1, InFeatures);
        // q, k, v (gate, up) share one float32 copy of their input where the products need one.
        var y = UseLoopPath ? LoopForward(x, SharedInputCast.Float32Rows(x, InFeatures), baseLayer)
            : OneTokenApplies(x2) ? OneToken(x2, SharedInputCast.Float32Rows(x, InFeatures), baseLayer)
            : FastForward(x2, Precision.ProductRows(x, InFeatures), baseLayer, x);
        return y.view(x.shape.SkipLast(1).Append(OutFeatures).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>The original's routing, for the loop port: softmax in float32 over all experts, the top-k, divided by
    /// their sum; hands the logits to the sink.</summary>
    (Tensor TopW, Tensor TopI) Route(Tensor logits)
    {
        var (topW, topI) = nn.functional.softmax(logits, 1).topk(TopK, dim: 1);
        topW = topW / topW.sum(1, keepdim: true);
        RouterLogitsSink?.Invoke(this, logits);
        Observer?.Add(Layer, Module, topI.detach(), topW.detach(), NumExperts);
        return (topW, topI);
    }

    /// <summary>
    /// The dense gate [..., E] of float32 <paramref name="logits"/> [..., E]: over each row's top-k experts the
    /// renormalised top-k probabilities (times <paramref name="scale"/>), 0 elsewhere. Computed as a softmax over the
    /// whole row with -inf added outside the top-k: exp(l_e) / sum over chosen exp(l) = p_e / sum over chosen p, the
    /// original's weights (softmax over all, top-k, divided by their sum) in fewer operations; the -inf entries come out
    /// exactly 0, and the backward pass is the softmax's alone (the top-k is taken on the detached logits: the choice
    /// has no gradient), where a top-k, a softmax over k and a scatter each had their own. Deviation on purpose, for
    /// speed; the fast path and the loop port agree (tested).
    /// </summary>
    internal static (Tensor Gate, Tensor TopI) TopKGate(Tensor logits, int topK, double scale)
    {
        using var scope = NewDisposeScope();
        var topI = logits.detach().topk(topK, dim: -1).indexes;
        var outside = torch.full_like(logits, double.NegativeInfinity).scatter_(-1, topI, torch.zeros_like(topI, ScalarType.Float32));
        var gate = nn.functional.softmax(logits + outside, -1);
        if (scale != 1) gate = gate * scale;
        return (gate.MoveToOuterDisposeScope(), topI.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// All experts at once: h = dropout(x) A^T [N, E*r], each expert's r columns scaled by its gate
    /// (0 for experts not chosen), then <c>y = W x</c> and <c>y += scaling * h B^T</c> as one matrix
    /// product accumulating in place into the base output (the scale rides on the product's alpha):
    /// no pass over the [N, out] output beyond the base layer's own, forward or backward. Exact because
    /// an unselected expert's gate is 0. bench/NOTES.md records what each part of this design gained.
    /// The products run in <paramref name="xa"/>'s dtype: float32, or the base's under mixed precision (the
    /// weights cast per call; logits, softmax and gate in float32 either way).
    /// Deviation from the original on purpose: one dropout mask per token is shared by its experts
    /// (the loop draws one per expert); the expectation is the same and with dropout off the two
    /// paths are equal (tested).
    /// </summary>
    Tensor FastForward(Tensor x2, Tensor xa, Models.Linear baseLayer, Tensor? input = null)
    {
        long N = xa.shape[0], ranks = (long)NumExperts * Rank;
        var type = xa.dtype;
        // Copying the small weights into the layouts the products want costs a pass over them: worth it
        // when the tokens outnumber their rows and a backward pass follows (training), not in decoding.
        bool relayout = Relayout ?? (TrainingLayout.BackwardFollows && N > NumExperts + ranks);
        bool merged = relayout && !(DropoutP > 0 && training);
        // Below float32 the adapter's output is cast, not accumulated by addmm_, so the scale rides on the [N, E]
        // gate instead of a pass over [N, out] forward and backward (exact when alpha / r is a power of two, as
        // the default 16 / 8; bench/NOTES.md).
        bool scaleInGate = x2.dtype != ScalarType.Float32;
        // q, k and v (gate and up) route as one when they read this same input (MolaSiblings).
        var h = relayout && input is not null && Siblings is { } siblings && siblings.Applies()
            ? siblings.Gated(this, input, xa, dropout: !merged, scaleInGate)
            : Gated(xa, merged, scaleInGate);
        // In float32, B^T made contiguous: its gradient then comes as h^T g, several times faster than the g^T h
        // that a transposed view of B gets from autograd. In bfloat16 both products run at one rate and the copy and
        // its backward cost more than they win (at 2048 x 5632, 2.0 ms against 3.0 a module; bench/NOTES.md).
        var bT = relayout && type == ScalarType.Float32 ? lora_B.t().contiguous() : lora_B.In(type).t();
        var y = baseLayer.Base(x2);                                                       // [N, out]
        // The base output is not saved by its own backward, so updating it in place is safe for autograd.
        if (y.dtype == ScalarType.Float32)
            y.addmm_(h, bT, beta: 1, alpha: (float)Scaling);
        else
            y.add_(h.mm(bT).In(y.dtype));   // scaled by the gate; in float32 then rounded, or in the base dtype (mixed)
        return y;
    }

    /// <summary>This layer's routed ranks [N, E*r] in <paramref name="xa"/>'s dtype: dropout(x) A^T with each expert's
    /// r columns scaled by its gate (0 for the experts not chosen; times the scale when <paramref name="scaleInGate"/>).</summary>
    Tensor Gated(Tensor xa, bool merged, bool scaleInGate)
    {
        long N = xa.shape[0], ranks = (long)NumExperts * Rank;
        var type = xa.dtype;
        Tensor logits, h;
        if (merged)
        {
            // Router and experts read the same input: one product [N, E + E*r] reads it once, forward and backward.
            // split, not two narrows: its backward is one cat, where each narrow's fills a zero [N, E + E*r] tensor.
            var both = xa.mm(torch.cat([router, lora_A], 0).In(type).t()).split([NumExperts, ranks], 1);
            logits = Float32Logits(both[0]);
            h = both[1];
        }
        else
        {
            logits = xa.mm(router.In(type).t()).to(ScalarType.Float32);                   // [N, E]
            h = Dropout(xa).mm(lora_A.In(type).t());                                       // [N, E*r]
        }
        RouterLogitsSink?.Invoke(this, logits);
        var (gate, topI) = TopKGate(logits, TopK, scaleInGate ? Scaling : 1);
        if (Observer is not null)
        {
            var topW = gate.gather(1, topI).detach();
            Observer.Add(Layer, Module, topI, scaleInGate ? topW / Scaling : topW, NumExperts);
        }
        // The gating in float32 (a bfloat16 h times the float32 gate promotes), rounded once into the products' dtype.
        return (h.view(N, NumExperts, Rank) * gate.unsqueeze(-1)).view(N, ranks).In(type);
    }

    /// <summary>A strided view of logits as a contiguous float32 tensor (softmax over a strided view is ~10x slower):
    /// a copy in float32, and below it the widening cast itself, which writes a contiguous tensor (one pass, not two).</summary>
    internal static Tensor Float32Logits(Tensor view) => view.dtype == ScalarType.Float32 ? view.contiguous() : view.to(ScalarType.Float32);

    /// <summary>Whether <see cref="OneToken"/> computes this call: one row, no autograd, no dropout, no routing observer,
    /// contiguous float32 weights on the CPU.</summary>
    bool OneTokenApplies(Tensor x2) => x2.shape[0] == 1 && x2.device_type == DeviceType.CPU && OneTokenReady;

    public bool OneTokenReady =>
        !is_grad_enabled() && !(DropoutP > 0 && training) && Observer is null && Vector256.IsHardwareAccelerated
        && router.device_type == DeviceType.CPU && router.is_contiguous() && lora_A.is_contiguous() && lora_B.is_contiguous();

    /// <summary>
    /// One token without autograd (decoding): the router's E dot products, the top-k and their softmax, the chosen
    /// experts' r dot products each, and their columns of B added into the base output, in C# over the float32 weights.
    /// Only the chosen experts' A and B are read (k of E), and the batched path's dozen libtorch calls per module
    /// (~10 us each: at the 1.1B shape about 1,800 a token, most of what MoLA added to a token) become one pass. The
    /// same arithmetic as <see cref="FastForward"/> in another summation order; its update is added as that path adds
    /// it (in float32 for a float32 base; rounded to the base dtype, then added, otherwise).
    /// </summary>
    Tensor OneToken(Tensor x2, Tensor xf, Models.Linear baseLayer)
    {
        var y = baseLayer.Base(x2).contiguous();
        if (y.dtype is not (ScalarType.Float32 or ScalarType.BFloat16)) return FastForward(x2, xf, baseLayer);
        using var x = xf.contiguous();
        unsafe
        {
            fixed (byte* xb = x.bytes, yb = y.bytes) OneToken((float*)xb, yb, y.dtype == ScalarType.BFloat16);
        }
        return y;
    }

    /// <summary>The one-pass decoder layer's way in: its base outputs are bfloat16.</summary>
    unsafe void Models.IOneTokenAdapter.AddOneToken(float* x, ushort* y) => OneToken(x, (byte*)y, bf16: true);

    unsafe void OneToken(float* x, byte* y, bool bf16)
    {
        var logits = new float[NumExperts];
        fixed (byte* rb = router.bytes, ab = lora_A.bytes, bb = lora_B.bytes)
            OneToken(x, (float*)rb, (float*)ab, (float*)bb, y, bf16, logits);
        // The adapter's sink keeps them only while it collects the balance loss (a forward pass with labels).
        RouterLogitsSink?.Invoke(this, torch.tensor(logits, [1, NumExperts]));
    }

    /// <summary>Outputs of B per decoding-team chunk (the chosen experts' columns of 256 rows: 8-64 KiB of B).</summary>
    const long OutputsPerChunk = 256;

    /// <summary>The k x r dot products of A and B's rows run as decoding-team jobs (<see cref="Models.DecodeTeam"/>),
    /// so both threads read the adapter: measured (bench/NOTES.md) one thread spent ~80 us a module at the 1.1B shape,
    /// about 13 ms a token.</summary>
    unsafe void OneToken(float* x, float* routerW, float* a, float* b, byte* y, bool bf16, Span<float> logits)
    {
        int k = TopK, r = Rank, ranks = NumExperts * Rank, threads = Math.Max(1, get_num_threads());
        long inF = InFeatures, outF = OutFeatures;
        for (int e = 0; e < NumExperts; e++) logits[e] = Dot(routerW + e * inF, x, InFeatures);
        // Top-k of the logits (the first of equal ones first), then a softmax over those k, as Route computes it.
        int* chosen = stackalloc int[k];
        Span<float> weight = stackalloc float[k];
        for (int i = 0; i < k; i++)
        {
            int best = -1;
            for (int e = 0; e < NumExperts; e++)
                if (new Span<int>(chosen, i).IndexOf(e) < 0 && (best < 0 || logits[e] > logits[best])) best = e;
            chosen[i] = best;
        }
        float top = logits[chosen[0]], sum = 0;
        for (int i = 0; i < k; i++) sum += weight[i] = MathF.Exp(logits[chosen[i]] - top);
        // h = gate * scaling * A_e x for the chosen experts, k x r values.
        float* gate = stackalloc float[k];
        for (int i = 0; i < k; i++) gate[i] = weight[i] / sum * (float)Scaling;
        float* h = stackalloc float[k * r];
        Models.DecodeTeam.Run(k * r, threads, c => h[c] = gate[c / r] * Dot(a + ((long)chosen[c / r] * r + c % r) * inF, x, (int)inF));
        int chunks = (int)((outF + OutputsPerChunk - 1) / OutputsPerChunk);
        Models.DecodeTeam.Run(chunks, threads, c =>
        {
            for (long o = c * OutputsPerChunk, end = Math.Min(outF, o + OutputsPerChunk); o < end; o++)
            {
                float* row = b + o * ranks;
                float delta = 0;
                if (r == 8)
                {
                    var acc = Vector256<float>.Zero;
                    for (int i = 0; i < k; i++) acc = Vector256.FusedMultiplyAdd(Vector256.Load(row + chosen[i] * 8), Vector256.Load(h + i * 8), acc);
                    delta = Vector256.Sum(acc);
                }
                else
                {
                    for (int i = 0; i < k; i++)
                        for (int j = 0; j < r; j++) delta += row[chosen[i] * r + j] * h[i * r + j];
                }
                if (!bf16) ((float*)y)[o] += delta;
                else
                {
                    var yo = (ushort*)y + o;
                    *yo = Bf16Gemv.Round(Bf16Gemv.Widen(*yo) + Bf16Gemv.Widen(Bf16Gemv.Round(delta)));
                }
            }
        });
    }

    /// <summary>sum_i p[i] q[i] over float32, four vector sums.</summary>
    static unsafe float Dot(float* p, float* q, int n)
    {
        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
        int i = 0;
        for (; i + 32 <= n; i += 32)
        {
            s0 = Vector256.FusedMultiplyAdd(Vector256.Load(p + i), Vector256.Load(q + i), s0);
            s1 = Vector256.FusedMultiplyAdd(Vector256.Load(p + i + 8), Vector256.Load(q + i + 8), s1);
            s2 = Vector256.FusedMultiplyAdd(Vector256.Load(p + i + 16), Vector256.Load(q + i + 16), s2);
            s3 = Vector256.FusedMultiplyAdd(Vector256.Load(p + i + 24), Vector256.Load(q + i + 24), s3);
        }
        float sum = Vector256.Sum((s0 + s1) + (s2 + s3));
        for (; i < n; i++) sum += p[i] * q[i];
        return sum;
    }

    Tensor LoopForward(Tensor x, Tensor xf, Models.Linear baseLayer)
    {
        var (topW, topI) = Route(xf.mm(router.t()));
        var result = baseLayer.Base(x);
        return result + LoopExperts(xf, topW, topI).view(result.shape).to(result.dtype);
    }

    /// <summary>A faithful port of the original MoLA loop: per expert, gather its routed tokens,
    /// compute B(A(dropout(x))) * scaling * weight, and index_add into the output.</summary>
    Tensor LoopExperts(Tensor xf, Tensor topW, Tensor topI)
    {
        long N = xf.shape[0];
        var final = torch.zeros(N, OutFeatures, ScalarType.Float32, xf.device);
        var expertMask = nn.functional.one_hot(topI, NumExperts).permute(2, 1, 0); // [E, k, N]
        for (int e = 0; e < NumExperts; e++)
        {
            var hits = torch.nonzero(expertMask[e]);                                    // [n, 2]: (slot, token)
            if (hits.shape[0] == 0) continue;
            var slot = hits[.., 0];
            var token = hits[.., 1];
            var current = xf.index_select(0, token);
            var expertOut = Dropout(current).matmul(ExpertA(e).t()).matmul(ExpertB(e).t()) * Scaling;
            var weight = topW.reshape(-1).index_select(0, token * TopK + slot).unsqueeze(1);   // routing_weights[token, slot]
            final = final.index_add(0, token, expertOut * weight, 1.0);
        }
        return final;
    }

    internal Tensor Dropout(Tensor x) => DropoutP > 0 && training ? nn.functional.dropout(x, DropoutP, training: true) : x;
}
