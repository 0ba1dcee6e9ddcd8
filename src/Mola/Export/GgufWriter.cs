using System.Text;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Export;

/// <summary>
/// Writes a LLaMA or Mistral model as a GGUF v3 file laid out as llama.cpp's own converter
/// (<c>convert_hf_to_gguf.py</c>) lays it out: architecture <c>llama</c>, the <c>llama.*</c> hyper-parameters,
/// tensors named <c>token_embd</c>, <c>blk.N.attn_q</c>, ..., <c>output_norm</c>, <c>output</c>, q and k rows
/// permuted from Hugging Face's rotate-half order to the interleaved pairs llama.cpp rotates, norms in F32 and the
/// matrices in the chosen type, and the SentencePiece vocabulary as <c>tokenizer.ggml.*</c>. Tensors are converted
/// and written one at a time.
/// </summary>
public static class GgufWriter
{
    const uint Magic = 0x46554747;   // "GGUF"
    const int Alignment = 32;        // general.alignment's default

    enum ValueType : uint { UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9 }

    /// <summary>The ggml tensor type and llama.cpp's file type (<c>general.file_type</c>) of each output type.</summary>
    public static (ScalarType Torch, uint Ggml, uint FileType) Type(string name) => name switch
    {
        "f32" => (ScalarType.Float32, 0, 0),
        "f16" => (ScalarType.Float16, 1, 1),
        "bf16" => (ScalarType.BFloat16, 30, 32),
        _ => throw new MolaException($"GGUF type \"{name}\" is not written (expected f16, bf16 or f32)"),
    };

    /// <summary>Writes the model of <paramref name="config"/> and <paramref name="weights"/> (Hugging Face names) with
    /// the tokenizer of <paramref name="baseDirectory"/> to <paramref name="path"/>.</summary>
    public static void Write(string path, ModelConfig config, IReadOnlyList<(string Name, Tensor Tensor)> weights, string baseDirectory, string type, string name)
    {
        if (config.IsGemma)
            throw new MolaException("GGUF export of model_type gemma is not supported (llama.cpp's gemma layout differs: norms stored as 1 + w, " +
                "no q/k permutation); export the merged Hugging Face checkpoint and convert it with llama.cpp's convert_hf_to_gguf.py");
        string spm = Path.Combine(baseDirectory, "tokenizer.model");
        if (!File.Exists(spm))
            throw new MolaException($"{spm}: not found; GGUF export takes the vocabulary from a SentencePiece tokenizer.model");
        var vocab = SentencePieceModelFile.Read(spm);
        if (vocab.Pieces.Length > config.VocabSize)
            throw new MolaException($"{spm}: {vocab.Pieces.Length} pieces, but the model's vocab_size is {config.VocabSize}");
        var (torchType, ggmlType, fileType) = Type(type);

        var parameters = weights.ToDictionary(p => p.Name, p => p.Tensor);
        var tensors = TensorNames(config, parameters.ContainsKey("lm_head.weight"));

        using var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        using var w = new BinaryWriter(fs, Encoding.UTF8);
        w.Write(Magic);
        w.Write(3u);
        w.Write((ulong)tensors.Count);
        var kv = Metadata(config, vocab, name, fileType);
        w.Write((ulong)kv.Count);
        foreach (var (key, write) in kv)
        {
            WriteString(w, key);
            write(w);
        }

        // Tensor infos: ggml lists dimensions fastest first, the reverse of torch's order.
        long offset = 0;
        var layout = new List<(string Gguf, string Hf, ScalarType Type, long Offset)>();
        foreach (var (gguf, hf) in tensors)
        {
            var t = parameters[hf];
            bool vector = t.dim() == 1;   // norms stay F32, as the converter keeps 1-D tensors
            var (st, gt) = vector ? (ScalarType.Float32, 0u) : (torchType, ggmlType);
            WriteString(w, gguf);
            w.Write((uint)t.dim());
            foreach (var d in t.shape.Reverse()) w.Write((ulong)d);
            w.Write(gt);
            w.Write((ulong)offset);
            layout.Add((gguf, hf, st, offset));
            offset += Padded(t.numel() * (vector ? 4 : ElementSize(st)));
        }
        Pad(w);
        long dataStart = fs.Position;
        foreach (var (gguf, hf, st, at) in layout)
        {
            using var scope = NewDisposeScope();
            var t = parameters[hf].detach();
            if (gguf.EndsWith("attn_q.weight", StringComparison.Ordinal)) t = Permute(t, config.NumAttentionHeads);
            else if (gguf.EndsWith("attn_k.weight", StringComparison.Ordinal)) t = Permute(t, config.NumKeyValueHeads);
            var c = t.to(st).contiguous();
            if (fs.Position - dataStart != at) throw new InvalidOperationException("GGUF offsets out of step");
            WriteBytes(w, c);
            Pad(w);
        }
    }

    /// <summary>Hugging Face stores each head's q (and k) rows as two halves rotated together (rotate-half);
    /// llama.cpp rotates adjacent pairs. Rows [half 0 | half 1] of every head become [h0[0], h1[0], h0[1], ...].</summary>
    static Tensor Permute(Tensor w, int heads)
    {
        long rows = w.shape[0];
        return w.reshape(heads, 2, rows / heads / 2, w.shape[1]).transpose(1, 2).reshape(w.shape);
    }

    static List<(string Gguf, string Hf)> TensorNames(ModelConfig c, bool ownHead)
    {
        var names = new List<(string, string)> { ("token_embd.weight", "model.embed_tokens.weight") };
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string hf = $"model.layers.{l}.", g = $"blk.{l}.";
            names.Add((g + "attn_norm.weight", hf + "input_layernorm.weight"));
            names.Add((g + "attn_q.weight", hf + "self_attn.q_proj.weight"));
            names.Add((g + "attn_k.weight", hf + "self_attn.k_proj.weight"));
            names.Add((g + "attn_v.weight", hf + "self_attn.v_proj.weight"));
            names.Add((g + "attn_output.weight", hf + "self_attn.o_proj.weight"));
            names.Add((g + "ffn_norm.weight", hf + "post_attention_layernorm.weight"));
            names.Add((g + "ffn_gate.weight", hf + "mlp.gate_proj.weight"));
            names.Add((g + "ffn_down.weight", hf + "mlp.down_proj.weight"));
            names.Add((g + "ffn_up.weight", hf + "mlp.up_proj.weight"));
        }
        names.Add(("output_norm.weight", "model.norm.weight"));
        if (ownHead) names.Add(("output.weight", "lm_head.weight"));   // tied: llama.cpp reuses token_embd
        return names;
    }

    static List<(string Key, Action<BinaryWriter> Write)> Metadata(ModelConfig c, Vocabulary v, string name, uint fileType)
    {
        // The converter pads a vocabulary shorter than vocab_size with unused [PADn] pieces.
        int n = c.VocabSize;
        var pieces = Enumerable.Range(0, n).Select(i => i < v.Pieces.Length ? v.Pieces[i] : $"[PAD{i}]").ToArray();
        var scores = Enumerable.Range(0, n).Select(i => i < v.Scores.Length ? v.Scores[i] : -1000f).ToArray();
        var types = Enumerable.Range(0, n).Select(i => i < v.Types.Length ? (int)v.Types[i] : (int)PieceType.Unused).ToArray();
        int unk = Array.IndexOf(v.Types, PieceType.Unknown);
        var kv = new List<(string, Action<BinaryWriter>)>
        {
            ("general.architecture", Str("llama")),
            ("general.name", Str(name)),
            ("general.file_type", U32(fileType)),
            ("general.quantization_version", U32(2)),
            ("llama.vocab_size", U32((uint)n)),
            ("llama.context_length", U32((uint)c.MaxPositionEmbeddings)),
            ("llama.embedding_length", U32((uint)c.HiddenSize)),
            ("llama.block_count", U32((uint)c.NumHiddenLayers)),
            ("llama.feed_forward_length", U32((uint)c.IntermediateSize)),
            ("llama.attention.head_count", U32((uint)c.NumAttentionHeads)),
            ("llama.attention.head_count_kv", U32((uint)c.NumKeyValueHeads)),
            ("llama.rope.dimension_count", U32((uint)c.HeadDim)),
            ("llama.rope.freq_base", F32((float)c.RopeTheta)),
            ("llama.attention.layer_norm_rms_epsilon", F32((float)c.RmsNormEps)),
            ("tokenizer.ggml.model", Str("llama")),
            ("tokenizer.ggml.tokens", w => { w.Write((uint)ValueType.Array); w.Write((uint)ValueType.String); w.Write((ulong)n); foreach (var p in pieces) WriteString(w, p); }),
            ("tokenizer.ggml.scores", w => { w.Write((uint)ValueType.Array); w.Write((uint)ValueType.Float32); w.Write((ulong)n); foreach (var s in scores) w.Write(s); }),
            ("tokenizer.ggml.token_type", w => { w.Write((uint)ValueType.Array); w.Write((uint)ValueType.Int32); w.Write((ulong)n); foreach (var t in types) w.Write(t); }),
            ("tokenizer.ggml.bos_token_id", U32((uint)c.BosTokenId)),
            ("tokenizer.ggml.eos_token_id", U32((uint)c.EosTokenId)),
            ("tokenizer.ggml.add_bos_token", Bool(true)),
            ("tokenizer.ggml.add_eos_token", Bool(false)),
            ("tokenizer.ggml.add_space_prefix", Bool(v.AddDummyPrefix)),
            ("tokenizer.ggml.remove_extra_whitespaces", Bool(v.RemoveExtraWhitespaces)),
        };
        if (unk >= 0) kv.Add(("tokenizer.ggml.unknown_token_id", U32((uint)unk)));
        if (c.PadTokenId is int pad && pad >= 0) kv.Add(("tokenizer.ggml.padding_token_id", U32((uint)pad)));
        return kv;
    }

    static Action<BinaryWriter> Str(string s) => w => { w.Write((uint)ValueType.String); WriteString(w, s); };
    static Action<BinaryWriter> U32(uint x) => w => { w.Write((uint)ValueType.UInt32); w.Write(x); };
    static Action<BinaryWriter> F32(float x) => w => { w.Write((uint)ValueType.Float32); w.Write(x); };
    static Action<BinaryWriter> Bool(bool x) => w => { w.Write((uint)ValueType.Bool); w.Write(x); };

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static long ElementSize(ScalarType t) => t == ScalarType.Float32 ? 4 : 2;
    static long Padded(long n) => (n + Alignment - 1) / Alignment * Alignment;

    static void Pad(BinaryWriter w)
    {
        long pad = Padded(w.BaseStream.Position) - w.BaseStream.Position;
        for (long i = 0; i < pad; i++) w.Write((byte)0);
    }

    // A Span holds at most 2^31 bytes: a large embedding is written a block of rows at a time.
    static void WriteBytes(BinaryWriter w, Tensor t)
    {
        long rows = t.shape[0], rowBytes = t.numel() * t.element_size() / Math.Max(rows, 1);
        long block = Math.Max(1, (1L << 30) / Math.Max(rowBytes, 1));
        for (long r = 0; r < rows; r += block)
        {
            using var part = t.narrow(0, r, Math.Min(block, rows - r));
            w.Write(part.bytes);
        }
    }
}
