using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>
/// The weights of a Hugging Face model directory: <c>model.safetensors</c>, or the shards named in
/// <c>model.safetensors.index.json</c>, or else torch's <c>pytorch_model.bin</c> or the shards named in
/// <c>pytorch_model.bin.index.json</c> (safetensors first where both are present, as Transformers does).
/// Tensors are read one at a time from memory-mapped files.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    readonly Dictionary<string, ITensorFile> _byTensor = new();
    readonly List<ITensorFile> _files = new();
    // The file that lists the tensors (model.safetensors or the shard index): errors about a missing tensor name it.
    string _weightsFile = "";

    public string Directory { get; }
    public IEnumerable<string> Names => _byTensor.Keys;

    Checkpoint(string directory) => Directory = directory;

    public static Checkpoint Open(string directory)
    {
        var ckpt = new Checkpoint(directory);
        try
        {
            foreach (var (single, open) in Formats)
            {
                string file = System.IO.Path.Combine(directory, single);
                string index = file + ".index.json";
                if (File.Exists(file))
                {
                    ckpt._weightsFile = file;
                    var f = open(file);
                    ckpt._files.Add(f);
                    foreach (var name in f.Tensors.Keys) ckpt._byTensor[name] = f;
                    return ckpt;
                }
                if (File.Exists(index))
                {
                    ckpt._weightsFile = index;
                    ckpt.OpenShards(index, open);
                    return ckpt;
                }
            }
            throw new MolaException($"{directory}: no weights (expected model.safetensors, model.safetensors.index.json, " +
                "pytorch_model.bin or pytorch_model.bin.index.json)");
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    // In the order Transformers prefers them.
    static readonly (string File, Func<string, ITensorFile> Open)[] Formats =
        [("model.safetensors", SafeTensorsFile.Open), ("pytorch_model.bin", TorchBinFile.Open)];

    void OpenShards(string index, Func<string, ITensorFile> open)
    {
        var root = JsonFile.ReadObject(index, "an index with a \"weight_map\" object from tensor names to shard files");
        if (root["weight_map"] is not JsonObject wm)
            throw new MolaException($"{index}: missing \"weight_map\" object");
        var map = wm.ToDictionary(p => p.Key, p => JsonFile.StringOf(p.Value, $"weight_map.{p.Key}", index, "the name of a shard file"));
        var shards = new Dictionary<string, ITensorFile>();
        foreach (var (name, file) in map)
        {
            if (file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                throw new MolaException($"{index}: shard name \"{file}\" must be a plain file name");
            if (!shards.TryGetValue(file, out var shard))
            {
                string path = System.IO.Path.Combine(Directory, file);
                if (!File.Exists(path)) throw new MolaException($"{index}: shard \"{file}\" (holding \"{name}\") not found");
                shard = open(path);
                shards[file] = shard;
                _files.Add(shard);
            }
            if (!shard.Contains(name)) throw new MolaException($"{shard.Path}: tensor \"{name}\" missing (the index says it is in this shard)");
            _byTensor[name] = shard;
        }
    }

    public bool Contains(string name) => _byTensor.ContainsKey(name);

    public TensorInfo Info(string name) => _byTensor.TryGetValue(name, out var f) ? f.Tensors[name]
        : throw new MolaException($"{_weightsFile}: tensor \"{name}\" missing");

    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null) =>
        _byTensor.TryGetValue(name, out var f) ? f.Read(name, dtype, device)
        : throw new MolaException($"{_weightsFile}: tensor \"{name}\" missing");

    /// <summary>Which file holds a tensor (for error messages).</summary>
    public string FileOf(string name) => _byTensor.TryGetValue(name, out var f) ? f.Path : _weightsFile;

    /// <summary>
    /// Compares a few tensors with what <paramref name="config"/> implies before the model is built: a config that
    /// disagrees with its weights (a wrong hidden size, vocabulary or layer count) would otherwise allocate a model
    /// of its own size first (gigabytes for a typo) or, with too few layers, leave the checkpoint's last layers unused.
    /// </summary>
    public void CheckAgainst(ModelConfig config, string configPath)
    {
        long hidden = config.HiddenSize, qRows = (long)config.NumAttentionHeads * config.HeadDim;
        int layers = config.NumHiddenLayers;
        Expect("model.embed_tokens.weight", [config.VocabSize, hidden]);
        Expect($"model.layers.{layers - 1}.self_attn.q_proj.weight", [qRows, hidden]);
        Expect("model.layers.0.mlp.gate_proj.weight", [config.IntermediateSize, hidden]);
        string extra = $"model.layers.{layers}.self_attn.q_proj.weight";
        if (Contains(extra))
            throw new MolaException($"{FileOf(extra)}: holds tensor \"{extra}\", but {configPath} says num_hidden_layers {layers}");

        void Expect(string name, long[] shape)
        {
            if (!Contains(name))
                throw new MolaException($"{_weightsFile}: tensor \"{name}\" missing (expected shape {SafeTensorsFile.FormatShape(shape)} from {configPath})");
            var info = Info(name);
            if (!info.Shape.SequenceEqual(shape))
                throw new MolaException($"{FileOf(name)}: tensor \"{name}\" has shape {SafeTensorsFile.FormatShape(info.Shape)}, {configPath} needs {SafeTensorsFile.FormatShape(shape)}");
        }
    }

    /// <summary>Loads every parameter of <paramref name="module"/> from the tensor of the same name, one at a time,
    /// checking shapes; the module's dtype and device are kept. A parameter stored in its own dtype, on the CPU, uses
    /// the mapped file's pages instead of a copy (<see cref="SafeTensorsFile.Map"/>): a bf16 checkpoint loaded in bf16
    /// is held once. Other dtypes are converted one tensor at a time.</summary>
    public void LoadInto(nn.Module module)
    {
        foreach (var (name, p) in module.named_parameters())
        {
            if (!_byTensor.TryGetValue(name, out var f))
                throw new MolaException($"{_weightsFile}: tensor \"{name}\" missing (expected shape {SafeTensorsFile.FormatShape(p.shape)})");
            f.ShareInto(name, p);   // frozen weights: the mapped file's pages where the dtype is the stored one
        }
    }

    /// <summary>
    /// The checkpoint's tensors that <paramref name="model"/> does not use, as Transformers lists them when it
    /// loads ("Some weights of the model checkpoint were not used"). One is an error rather than an extra: a head
    /// of its own (<c>lm_head.weight</c> unlike the embeddings) under a config that ties the head to the
    /// embeddings, as Gemma's always does: the model would silently answer with another head than the one trained,
    /// so the config's model_type or tie_word_embeddings does not fit these weights.
    /// </summary>
    public List<string> UnusedBy(nn.Module model, ModelConfig config, string configPath)
    {
        var used = model.named_parameters().Select(p => p.name).ToHashSet();
        var unused = Names.Where(n => !used.Contains(n)).Order(StringComparer.Ordinal).ToList();
        const string head = "lm_head.weight", embeddings = "model.embed_tokens.weight";
        if (config.TieWordEmbeddings && unused.Contains(head) && !SameValues(head, embeddings))
        {
            string why = config.IsGemma ? "model_type gemma ties the head to the embeddings" : "tie_word_embeddings is true";
            throw new MolaException($"{FileOf(head)}: holds \"{head}\", a head unlike \"{embeddings}\", but {configPath} says {why}: " +
                "these weights are of another model_type, or the config is wrong");
        }
        return unused;
    }

    bool SameValues(string a, string b)
    {
        if (!Info(a).Shape.SequenceEqual(Info(b).Shape) || Info(a).DType != Info(b).DType) return false;
        using var x = Read(a);
        using var y = Read(b);
        using var differ = x.ne(y).any();
        return !differ.item<bool>();
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
