using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>Token embeddings (a frozen lookup table named as in the checkpoint).</summary>
public sealed class Embedding : nn.Module<Tensor, Tensor>
{
    public Parameter weight;

    public Embedding(string name, int vocab, int hidden, ScalarType dtype, Device device) : base(name)
    {
        weight = new Parameter(torch.empty(vocab, hidden, dtype, device), requires_grad: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var flat = ids.reshape(-1);
        using var rows = weight.index_select(0, flat);
        var shape = ids.shape.Append(weight.shape[1]).ToArray();
        return rows.view(shape);
    }
}

/// <summary><c>model.*</c> of a Hugging Face decoder: embeddings, layers, final norm.</summary>
public sealed class DecoderModel : nn.Module<Tensor, Tensor>
{
    public Embedding embed_tokens;
    public ModuleList<DecoderLayer> layers;
    public RmsNorm norm;

    public DecoderModel(ModelConfig c, ScalarType dtype, Device device) : base("model")
    {
        embed_tokens = new Embedding("embed_tokens", c.VocabSize, c.HiddenSize, dtype, device);
        layers = new ModuleList<DecoderLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(i => new DecoderLayer(i, c, dtype, device)).ToArray());
        norm = new RmsNorm("norm", c.HiddenSize, c.RmsNormEps, c.IsGemma, dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("call CausalLM.Forward");
}

/// <summary>
/// A LLaMA-family causal language model (llama, mistral, gemma v1) in Hugging Face layout:
/// parameter names equal the checkpoint keys, so loading is a walk over <c>named_parameters()</c>.
/// </summary>
public sealed class CausalLM : nn.Module<Tensor, Tensor>
{
    public DecoderModel model;
    public Linear? lm_head;

    public ModelConfig Config { get; }
    public ScalarType DType { get; }
    public Device Device { get; }

    /// <summary>The error for outputs that are NaN or infinite (<paramref name="what"/> says which): printed as
    /// numbers they would pass for a result. Loaded weights are checked, so an overflow is the likely cause.</summary>
    public static MolaException NotFinite(string what) =>
        new(n => $"{what} NaN or infinite: the model's outputs overflowed (float16 holds at most 65504: try {n("dtype")} bfloat16 or float32) or its weights are damaged");
    readonly Rotary _rotary;

    public CausalLM(ModelConfig config, ScalarType dtype, Device device) : base("CausalLM")
    {
        Config = config;
        DType = dtype;
        Device = device;
        model = new DecoderModel(config, dtype, device);
        lm_head = config.TieWordEmbeddings ? null : new Linear("lm_head", config.HiddenSize, config.VocabSize, dtype, device);
        _rotary = new Rotary(config.HeadDim, config.RopeTheta, device);
        RegisterComponents();
    }

    public IReadOnlyList<DecoderLayer> Layers => model.layers.ToList();

    public override Tensor forward(Tensor inputIds) => Forward(inputIds);

    /// <summary>
    /// Logits [B, T, V] in the model's dtype.
    /// </summary>
    /// <param name="inputIds">[B, T] token ids (this step's tokens when a cache is given).</param>
    /// <param name="attentionMask">[B, past + T], 1 for real tokens and 0 for padding; null: all real.
    /// Positions count real tokens only, so left and right padding give the same logits.</param>
    /// <param name="cache">Keys and values of earlier steps; this step's are appended.</param>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        var ctx = Context(inputIds, attentionMask, cache);
        var x = Embed(inputIds);
        foreach (var layer in model.layers)
            x = layer.Forward(x, ctx);
        return Head(x).MoveToOuterDisposeScope();
    }

    /// <summary>What every layer of a forward pass over <paramref name="inputIds"/> shares: rotary angles of each
    /// token's position and the attention mask (tensors in the caller's dispose scope). The pieces of
    /// <see cref="Forward"/> are public for gradient checkpointing, which runs the layers one at a time.</summary>
    public ForwardContext Context(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        long B = inputIds.shape[0], T = inputIds.shape[1];
        long past = cache?.Length ?? 0, total = past + T;
        var valid = attentionMask is null ? ones(B, total, ScalarType.Bool, Device) : attentionMask.to(ScalarType.Bool, Device);
        if (valid.shape[1] != total)
            throw new ArgumentException($"attention mask covers {valid.shape[1]} positions, expected {total}");
        var positions = (valid.to(ScalarType.Int64).cumsum(1, ScalarType.Int64) - 1).clamp_min(0)[.., (int)past..];
        var (cos, sin) = _rotary.Angles(positions, DType);
        // Without padding or a window that hides keys, causality is all the mask says: libtorch's attention then
        // needs no [T, total] mask (a single new token sees every key; a whole sequence is its causal case).
        bool plain = (attentionMask is null || valid.all().item<bool>())
            && (Config.SlidingWindow is not int window || total <= window)
            && (past == 0 || T == 1);
        return new ForwardContext { Cos = cos, Sin = sin, Mask = plain ? null : BuildMask(valid, past, T), Causal = plain && T > 1, Cache = cache };
    }

    /// <summary>Token embeddings [B, T, D], scaled by sqrt(D) for Gemma.</summary>
    public Tensor Embed(Tensor inputIds)
    {
        var x = model.embed_tokens.call(inputIds.to(Device));   // call: forward hooks run (the bench hooks this)
        if (Config.IsGemma)
            x = x * tensor(Math.Sqrt(Config.HiddenSize), DType, Device); // the scale in the model's dtype, as HF does
        return x;
    }

    /// <summary>Final norm and the output projection (the embeddings when tied): logits [B, T, V].</summary>
    public Tensor Head(Tensor hidden)
    {
        var x = model.norm.forward(hidden);
        return lm_head is null ? Linear.Product(x, model.embed_tokens.weight) : lm_head.forward(x);
    }

    /// <summary>[B, 1, T, past + T]: causal, not padding, inside Mistral's sliding window; a query may
    /// always see itself so that padded rows never become all-masked (which would give NaN).</summary>
    Tensor BuildMask(Tensor valid, long past, long T)
    {
        long total = past + T;
        var q = arange(past, total, ScalarType.Int64, Device).unsqueeze(1);   // [T, 1] query slots
        var k = arange(0, total, ScalarType.Int64, Device).unsqueeze(0);      // [1, total] key slots
        var allowed = k.le(q);
        if (Config.SlidingWindow is int w) allowed = allowed.logical_and((q - k).lt(w));
        var mask = allowed.unsqueeze(0).logical_and(valid.unsqueeze(1));     // [B, T, total]
        mask = mask.logical_or(k.eq(q).unsqueeze(0));
        return mask.unsqueeze(1);
    }
}
