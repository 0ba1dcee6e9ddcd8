using System.Text.Json;
using System.Text.Json.Nodes;

namespace Mola.Models;

/// <summary>The fields of a Hugging Face <c>config.json</c> that the decoders use.</summary>
public sealed record ModelConfig
{
    public static readonly string[] SupportedModelTypes = ["llama", "mistral", "gemma"];

    public required string ModelType { get; init; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public int MaxPositionEmbeddings { get; init; } = 4096;
    public bool TieWordEmbeddings { get; init; }
    public string HiddenAct { get; init; } = "silu";
    public int? SlidingWindow { get; init; }
    public int BosTokenId { get; init; } = 1;
    public int EosTokenId { get; init; } = 2;
    public int? PadTokenId { get; init; }
    public string? TorchDtype { get; init; }

    public bool IsGemma => ModelType == "gemma";

    public static ModelConfig Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, "config.json");
        if (!File.Exists(path))
            throw new MolaException($"{path}: not found (a base model directory needs config.json)");
        return FromJson(JsonFile.ReadObject(path, "a Hugging Face model config"), path);
    }

    public static ModelConfig FromJson(JsonObject o, string source)
    {
        string type = JsonFile.String(o, "model_type", source) ?? throw new MolaException($"{source}: missing \"model_type\"");
        if (!SupportedModelTypes.Contains(type))
            throw new MolaException($"{source}: unsupported model_type \"{type}\" (supported: {string.Join(", ", SupportedModelTypes)})");
        int Req(string key) => JsonFile.Int(o, key, source) ?? throw new MolaException($"{source}: missing \"{key}\"");
        int hidden = Req("hidden_size"), heads = Req("num_attention_heads");
        if (heads <= 0) throw new MolaException($"{source}: \"num_attention_heads\" must be positive, got {heads}");
        int kv = JsonFile.Int(o, "num_key_value_heads", source) ?? heads;
        int headDim = JsonFile.Int(o, "head_dim", source) ?? hidden / heads;
        var cfg = new ModelConfig
        {
            ModelType = type,
            VocabSize = Req("vocab_size"),
            HiddenSize = hidden,
            IntermediateSize = Req("intermediate_size"),
            NumHiddenLayers = Req("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = kv,
            HeadDim = headDim,
            RmsNormEps = JsonFile.Number(o, "rms_norm_eps", source) ?? 1e-6,
            RopeTheta = JsonFile.Number(o, "rope_theta", source) ?? 10000.0,
            MaxPositionEmbeddings = JsonFile.Int(o, "max_position_embeddings", source) ?? 4096,
            // Gemma ties its head to the embeddings whether or not the config says so.
            TieWordEmbeddings = type == "gemma" || JsonFile.Bool(o, "tie_word_embeddings", source) == true,
            HiddenAct = JsonFile.String(o, "hidden_activation", source) ?? JsonFile.String(o, "hidden_act", source) ?? (type == "gemma" ? "gelu_pytorch_tanh" : "silu"),
            SlidingWindow = type == "mistral" ? JsonFile.Int(o, "sliding_window", source) : null,
            BosTokenId = JsonFile.Int(o, "bos_token_id", source) ?? 1,
            EosTokenId = FirstInt(o, "eos_token_id", source) ?? 2,
            PadTokenId = JsonFile.Int(o, "pad_token_id", source),
            TorchDtype = JsonFile.String(o, "torch_dtype", source),
        };
        if (hidden <= 0 || heads <= 0 || kv <= 0 || headDim <= 0 || cfg.NumHiddenLayers <= 0 || cfg.VocabSize <= 0 || cfg.IntermediateSize <= 0)
            throw new MolaException($"{source}: sizes must be positive");
        if (cfg.MaxPositionEmbeddings <= 0)
            throw new MolaException($"{source}: \"max_position_embeddings\" must be positive, got {cfg.MaxPositionEmbeddings}");
        // Inverted or NaN rotary frequencies, and a norm that divides by zero or by a negative root, turn every
        // output into NaN while the model loads fine.
        if (cfg.RopeTheta <= 0)
            throw JsonFile.Expected(source, "rope_theta", "a positive number (the rotary base, 10000 for LLaMA)", o["rope_theta"]);
        if (cfg.RmsNormEps < 0)
            throw JsonFile.Expected(source, "rms_norm_eps", "a number of 0 or more (1e-5 or 1e-6 for these models)", o["rms_norm_eps"]);
        if (cfg.SlidingWindow is int w && w <= 0)
            throw new MolaException($"{source}: \"sliding_window\" must be positive or null, got {w}");
        // pad_token_id is left alone: some published LLaMA configs say -1, and nothing here reads it as an index.
        foreach (var (key, id) in new[] { ("bos_token_id", cfg.BosTokenId), ("eos_token_id", cfg.EosTokenId) })
        {
            if (id < 0 || id >= cfg.VocabSize)
                throw new MolaException($"{source}: \"{key}\" {id} is outside the vocabulary (0 to {cfg.VocabSize - 1})");
        }
        if (heads % kv != 0)
            throw new MolaException($"{source}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})");
        if (headDim % 2 != 0)
            throw new MolaException($"{source}: head_dim ({headDim}) must be even for rotary embeddings");
        if (cfg.HiddenAct is not ("silu" or "gelu_pytorch_tanh" or "gelu_tanh" or "gelu"))
            throw new MolaException($"{source}: unsupported activation \"{cfg.HiddenAct}\" (supported: silu, gelu_pytorch_tanh, gelu)");
        return cfg;
    }

    static int? FirstInt(JsonObject o, string key, string source) =>
        o[key] is JsonArray a ? (a.Count > 0 ? JsonFile.IntValue(a[0], key, source) : throw JsonFile.Expected(source, key, "an integer or a list of integers", a))
        : JsonFile.Int(o, key, source);
}
