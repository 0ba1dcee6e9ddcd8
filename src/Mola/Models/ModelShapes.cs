using System.Globalization;
using System.Text.Json.Nodes;

namespace Mola.Models;

/// <summary>Real model shapes (the published config.json values that decide tensor sizes): the scale harness
/// (tools/Scale) writes random-weight checkpoints of them, <c>mola bench --shape</c> builds them in memory.</summary>
public sealed record ModelShapes(string ModelType, int Vocab, int Hidden, int Intermediate, int Layers, int Heads, int KvHeads, int MaxPositions, int? SlidingWindow)
{
    public static readonly IReadOnlyDictionary<string, ModelShapes> All = new Dictionary<string, ModelShapes>
    {
        ["tinyllama-1.1b"] = new("llama", 32000, 2048, 5632, 22, 32, 4, 2048, null),
        ["llama-2-7b"] = new("llama", 32000, 4096, 11008, 32, 32, 32, 4096, null),
        ["mistral-7b"] = new("mistral", 32000, 4096, 14336, 32, 32, 8, 32768, 4096),
        // Real layer shapes with few layers: the memory planner's calibration runs, small enough to run beside others.
        ["tinyllama-4layers"] = new("llama", 32000, 2048, 5632, 4, 32, 4, 2048, null),
        ["llama-2-7b-2layers"] = new("llama", 32000, 4096, 11008, 2, 32, 32, 4096, null),
    };

    public string ConfigJson(string dtype) => string.Create(CultureInfo.InvariantCulture, $$"""
        {
          "architectures": ["{{(ModelType == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM")}}"],
          "model_type": "{{ModelType}}",
          "vocab_size": {{Vocab}},
          "hidden_size": {{Hidden}},
          "intermediate_size": {{Intermediate}},
          "num_hidden_layers": {{Layers}},
          "num_attention_heads": {{Heads}},
          "num_key_value_heads": {{KvHeads}},
          "max_position_embeddings": {{MaxPositions}},{{(SlidingWindow is int w ? $"\n  \"sliding_window\": {w}," : "")}}
          "rms_norm_eps": 1e-05,
          "rope_theta": 10000.0,
          "tie_word_embeddings": false,
          "bos_token_id": 1,
          "eos_token_id": 2,
          "torch_dtype": "{{dtype}}"
        }
        """);

    /// <summary>The shape as a model config (what loading its config.json gives).</summary>
    public ModelConfig Config() => ModelConfig.FromJson(JsonNode.Parse(ConfigJson("float32"))!.AsObject(), "shape");

    /// <summary>Every tensor of the checkpoint with its shape, in Hugging Face names.</summary>
    public IEnumerable<(string Name, long[] Shape)> Tensors()
    {
        long d = Hidden, kv = (long)Hidden / Heads * KvHeads, f = Intermediate;
        yield return ("model.embed_tokens.weight", [Vocab, d]);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            yield return (p + "input_layernorm.weight", [d]);
            yield return (p + "self_attn.q_proj.weight", [d, d]);
            yield return (p + "self_attn.k_proj.weight", [kv, d]);
            yield return (p + "self_attn.v_proj.weight", [kv, d]);
            yield return (p + "self_attn.o_proj.weight", [d, d]);
            yield return (p + "post_attention_layernorm.weight", [d]);
            yield return (p + "mlp.gate_proj.weight", [f, d]);
            yield return (p + "mlp.up_proj.weight", [f, d]);
            yield return (p + "mlp.down_proj.weight", [d, f]);
        }
        yield return ("model.norm.weight", [d]);
        yield return ("lm_head.weight", [Vocab, d]);
    }
}
