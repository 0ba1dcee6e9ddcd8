using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Mola.Evaluation;
using Mola.Models;
using Xunit;
using Xunit.Abstractions;

namespace Mola.Tests;

/// <summary>
/// Every broken input is one clear error that names the file (and the key, tensor or line) and the
/// problem, both from the library (a MolaException) and through the CLI (exit code 1, one
/// <c>error:</c> line, no stack trace). The broken files are copies of the fixtures.
/// </summary>
[Trait("Category", "Slow")]
public class InputErrorTests(ITestOutputHelper log)
{
    const string Shard2 = "model-00002-of-00002.safetensors";
    const string Index = "model.safetensors.index.json";

    public static TheoryData<string> BrokenModels =>
    [
        "missing directory", "missing config.json", "config.json not JSON", "unsupported model_type",
        "missing weights", "missing shard", "index not JSON", "index without weight_map",
        "tensor missing from the index", "tensor missing from its shard", "tensor missing from model.safetensors",
        "tensor of the wrong shape", "truncated file", "header length larger than the file", "header not JSON",
        "data offsets past the end", "data offsets reversed", "overlapping data offsets", "unknown dtype",
        "no attention heads", "no positions", "bos outside the vocabulary", "integer weights", "shape that overflows",
        "config with fewer layers", "config with a million layers", "config with a huge hidden size", "tie_word_embeddings not a boolean",
        // Findings 4-6 of the fault run: each was an unnamed InvalidOperationException, or loaded.
        "header not UTF-8", "header with a lone surrogate", "data_offsets of strings", "data_offsets an object", "shape of strings",
        "dtype a number", "duplicate tensor name", "bytes after the last tensor", "gap between tensors",
        "duplicate key in config.json", "duplicate key in the index", "rope_theta zero", "rope_theta negative",
        "rms_norm_eps negative", "rope_theta infinite", "config value an object", "NaN in a base weight", "infinity in a base weight",
        "gemma config on llama weights", "tied config on an untied checkpoint",
    ];

    /// <summary>Breaks a copy of llama-tiny (two shards) or mistral-tiny (one file) in one way; returns the
    /// directory and the pieces its error message must contain.</summary>
    static (string Dir, string[] Mentions) Break(string brokenModel)
    {
        string dir = TestUtil.CopyFixture(brokenModel == "tensor missing from model.safetensors" ? "mistral-tiny" : "llama-tiny");
        string config = Path.Combine(dir, "config.json"), index = Path.Combine(dir, Index), shard = Path.Combine(dir, Shard2);
        switch (brokenModel)
        {
            case "missing directory":
                Directory.Delete(dir, recursive: true);
                return (dir, [dir, "not found"]);
            case "missing config.json":
                File.Delete(config);
                return (dir, [config, "not found"]);
            case "config.json not JSON":
                // Line 6 of the fixture is `"vocab_size": 400,`: without its comma the parser stops on line 7.
                var lines = File.ReadAllLines(config);
                Assert.Equal("\"vocab_size\": 400,", lines[5].Trim());
                lines[5] = lines[5].Replace(",", "");
                File.WriteAllLines(config, lines);
                return (dir, [config + ":7: invalid JSON"]);
            case "index not JSON":
                File.WriteAllText(index, "{\n  \"weight_map\": {\n    \"lm_head.weight\": model-00001\n  }\n}\n");
                return (dir, [index + ":3: invalid JSON"]);
            case "index without weight_map":
                File.WriteAllText(index, "[]");
                return (dir, [index, "expected a JSON object", "\"weight_map\""]);
            case "unsupported model_type":
                File.WriteAllText(config, File.ReadAllText(config).Replace("\"llama\"", "\"gpt2\""));
                return (dir, [config, "unsupported model_type \"gpt2\"", "llama"]);
            case "missing weights":
                foreach (var f in Directory.GetFiles(dir, "model*")) File.Delete(f);
                return (dir, [dir, "no weights", "model.safetensors"]);
            case "missing shard":
                File.Delete(shard);
                return (dir, [index, $"shard \"{Shard2}\"", "not found"]);
            case "tensor missing from the index":
                var json = JsonNode.Parse(File.ReadAllText(index))!;
                json["weight_map"]!.AsObject().Remove("model.norm.weight");
                File.WriteAllText(index, json.ToJsonString());
                return (dir, [index, "tensor \"model.norm.weight\" missing", "[64]"]);
            case "tensor missing from its shard":
                RewriteTensors(shard, t => t.Remove("model.norm.weight"));
                return (dir, [shard, "tensor \"model.norm.weight\" missing"]);
            case "tensor missing from model.safetensors":
                string single = Path.Combine(dir, "model.safetensors");
                RewriteTensors(single, t => t.Remove("model.norm.weight"));
                return (dir, [single, "tensor \"model.norm.weight\" missing", "[64]"]);
            case "tensor of the wrong shape":
                RewriteTensors(shard, t => t["model.norm.weight"] = TorchSharp.torch.ones(65));
                return (dir, [shard, "tensor \"model.norm.weight\"", "shape [65]", "expected [64]"]);
            case "truncated file":
                var bytes = File.ReadAllBytes(shard);
                File.WriteAllBytes(shard, bytes[..^100]);
                return (dir, [shard, "truncated"]);
            case "header length larger than the file":
                var withLength = File.ReadAllBytes(shard);
                BinaryPrimitives.WriteUInt64LittleEndian(withLength, (ulong)withLength.Length);
                File.WriteAllBytes(shard, withLength);
                return (dir, [shard, $"header length {withLength.Length}", "larger than the file"]);
            case "header not JSON":
                var (header, data) = ReadRaw(shard);
                WriteRaw(shard, Encoding.UTF8.GetBytes(new string('x', header.Length)), data);
                return (dir, [shard + ":1: invalid JSON"]);
            case "data offsets past the end":
                EditHeader(shard, (h, dataLength) => Shift(h["model.norm.weight"]!, dataLength));
                return (dir, [shard, "tensor \"model.norm.weight\"", "past the end of the data"]);
            case "data offsets reversed":
                EditHeader(shard, (h, _) =>
                {
                    var off = h["model.norm.weight"]!["data_offsets"]!.AsArray();
                    h["model.norm.weight"]!["data_offsets"] = new JsonArray((long)off[1]!, (long)off[0]!);
                });
                return (dir, [shard, "tensor \"model.norm.weight\"", "not a valid range"]);
            case "overlapping data offsets":
                // Two tensors of the same shape, one pointing at the other's bytes.
                string range = "";
                EditHeader(shard, (h, _) =>
                {
                    var off = h["model.layers.2.self_attn.q_proj.weight"]!["data_offsets"]!;
                    h["model.layers.2.self_attn.k_proj.weight"]!["data_offsets"] = off.DeepClone();
                    range = $"[{off[0]}, {off[1]}]";
                });
                return (dir, [shard, $"\"model.layers.2.self_attn.k_proj.weight\" {range}", $"\"model.layers.2.self_attn.q_proj.weight\" {range}", "overlapping"]);
            case "unknown dtype":
                EditHeader(shard, (h, _) => h["model.norm.weight"]!["dtype"] = "F8_E4M3");
                return (dir, [shard, "tensor \"model.norm.weight\"", "unknown dtype \"F8_E4M3\""]);
            case "no attention heads":
                SetConfig(config, "num_attention_heads", 0);   // it divides the hidden size: checked before that
                return (dir, [config, "\"num_attention_heads\" must be positive, got 0"]);
            case "no positions":
                SetConfig(config, "max_position_embeddings", 0);
                return (dir, [config, "\"max_position_embeddings\" must be positive, got 0"]);
            case "bos outside the vocabulary":
                SetConfig(config, "bos_token_id", 5000);
                return (dir, [config, "\"bos_token_id\" 5000 is outside the vocabulary (0 to 399)"]);
            case "integer weights":
                RewriteTensors(shard, t => t["model.norm.weight"] = TorchSharp.torch.ones(64, TorchSharp.torch.ScalarType.Int32));
                return (dir, [shard, "tensor \"model.norm.weight\" is stored as I32", "F32, F16, BF16 or F64"]);
            case "shape that overflows":
                // 4 x (2^60 + 16) float32 is 2^64 + 256 bytes: 256 once wrapped, the tensor's true size. Checked arithmetic refuses it.
                EditHeader(shard, (h, _) => h["model.norm.weight"]!["shape"] = new JsonArray(4L, (1L << 60) + 16));
                return (dir, [shard, "tensor \"model.norm.weight\"", "shape [4, 1152921504606846992] is too large to be stored"]);
            case "config with fewer layers":
                SetConfig(config, "num_hidden_layers", 2);   // the weights have 3: layer 2 would go unused
                return (dir, ["holds tensor \"model.layers.2.self_attn.q_proj.weight\"", config, "num_hidden_layers 2"]);
            case "config with a million layers":
                // Checked against the weights before a model of that size is built (it would take gigabytes first).
                SetConfig(config, "num_hidden_layers", 1_000_000);
                return (dir, ["tensor \"model.layers.999999.self_attn.q_proj.weight\" missing", config]);
            case "config with a huge hidden size":
                SetConfig(config, "hidden_size", 1 << 20);
                return (dir, ["tensor \"model.embed_tokens.weight\" has shape [400, 64]", config, "needs [400, 1048576]"]);
            case "tie_word_embeddings not a boolean":
                var tied = JsonNode.Parse(File.ReadAllText(config))!;
                tied["tie_word_embeddings"] = "yes";   // read as false before: the head silently untied
                File.WriteAllText(config, tied.ToJsonString());
                return (dir, [config, "key \"tie_word_embeddings\": expected true or false, got \"yes\""]);
            case "header not UTF-8":
                // 0xFF never occurs in UTF-8: put one inside a tensor name.
                var (h8, d8) = ReadRaw(shard);
                int at = Encoding.UTF8.GetString(h8).IndexOf("post_attention", StringComparison.Ordinal);
                h8[at] = 0xFF;
                WriteRaw(shard, h8, d8);
                return (dir, [shard + ":1: not valid UTF-8 text"]);
            case "header with a lone surrogate":
                EditHeaderText(shard, h => h.Replace("post_attention", "\\ud800post_attention"));
                return (dir, [shard, "not valid text", "surrogate"]);
            case "data_offsets of strings":
                EditHeader(shard, (h, _) => h["model.norm.weight"]!["data_offsets"] = new JsonArray("0", "256"));
                return (dir, [shard, "tensor \"model.norm.weight\": key \"data_offsets\": expected [begin, end] of non-negative integers, got [\"0\",\"256\"]"]);
            case "data_offsets an object":
                EditHeader(shard, (h, _) => h["model.norm.weight"]!["data_offsets"] = new JsonObject { ["begin"] = 0 });
                return (dir, [shard, "tensor \"model.norm.weight\": key \"data_offsets\": expected [begin, end]", "got {\"begin\":0}"]);
            case "shape of strings":
                EditHeader(shard, (h, _) => h["model.norm.weight"]!["shape"] = new JsonArray("64"));
                return (dir, [shard, "tensor \"model.norm.weight\": key \"shape\": expected a list of non-negative integers, got [\"64\"]"]);
            case "dtype a number":
                EditHeader(shard, (h, _) => h["model.norm.weight"]!["dtype"] = 4);
                return (dir, [shard, "tensor \"model.norm.weight\": key \"dtype\": expected a string, got 4"]);
            case "duplicate tensor name":
                // The same name twice, both entries valid: which one wins was the parser's accident.
                EditHeaderText(shard, h => h.Replace("\"model.layers.1.self_attn.k_proj.weight\"", "\"model.layers.1.self_attn.o_proj.weight\""));
                return (dir, [shard, "duplicate key \"model.layers.1.self_attn.o_proj.weight\""]);
            case "bytes after the last tensor":
                var (ht, dt) = ReadRaw(shard);
                WriteRaw(shard, ht, [.. dt, 1, 2, 3, 4, 5, 6, 7, 8]);
                return (dir, [shard, "8 bytes after the last tensor", $"end at data offset {dt.Length} of {dt.Length + 8}"]);
            case "gap between tensors":
                // 8 more bytes of data, and the last tensor moved past them: 8 bytes that belong to no tensor.
                var (hg, dg) = ReadRaw(shard);
                WriteRaw(shard, hg, [.. dg, 0, 0, 0, 0, 0, 0, 0, 0]);
                string lastName = "";
                EditHeader(shard, (h, _) =>
                {
                    var last = h.Where(kv => kv.Key != "__metadata__").MaxBy(kv => (long)kv.Value!["data_offsets"]![1]!);
                    lastName = last.Key;
                    Shift(last.Value!, 8);
                });
                return (dir, [shard, "8 bytes at data offset", $"before \"{lastName}\"", "without gaps"]);
            case "duplicate key in config.json":
                File.WriteAllText(config, File.ReadAllText(config).Replace("\"hidden_size\": 64,", "\"hidden_size\": 64, \"hidden_size\": 128,"));
                return (dir, [config, "duplicate key \"hidden_size\""]);
            case "duplicate key in the index":
                File.WriteAllText(index, File.ReadAllText(index).Replace("\"model.norm.weight\":", "\"model.norm.weight\": \"x.safetensors\", \"model.norm.weight\":"));
                return (dir, [index, "duplicate key \"model.norm.weight\""]);
            case "rope_theta zero":
                SetConfig(config, "rope_theta", 0);
                return (dir, [config, "key \"rope_theta\": expected a positive number", "got 0"]);
            case "rope_theta negative":
                SetConfig(config, "rope_theta", -10000);
                return (dir, [config, "key \"rope_theta\": expected a positive number", "got -10000"]);
            case "rms_norm_eps negative":
                SetConfig(config, "rms_norm_eps", -1);
                return (dir, [config, "key \"rms_norm_eps\": expected a number of 0 or more", "got -1"]);
            case "rope_theta infinite":
                // 1e400 is valid JSON and parses as infinity.
                File.WriteAllText(config, File.ReadAllText(config).Replace("\"rope_theta\": 10000.0", "\"rope_theta\": 1e400"));
                return (dir, [config, "key \"rope_theta\": expected a finite number, got 1e400"]);
            case "config value an object":
                File.WriteAllText(config, File.ReadAllText(config).Replace("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": {\"v\": 1}"));
                return (dir, [config, "key \"rms_norm_eps\": expected a finite number, got {\"v\":1}"]);
            case "NaN in a base weight":
            case "infinity in a base weight":
                float bad = brokenModel.StartsWith("NaN") ? float.NaN : float.NegativeInfinity;
                RewriteTensors(shard, t => t["model.layers.1.self_attn.k_proj.weight"][5, 7] = TorchSharp.torch.tensor(bad));
                return (dir, [shard, "tensor \"model.layers.1.self_attn.k_proj.weight\" holds NaN or infinite values"]);
            case "gemma config on llama weights":
                // Same tensor names and shapes, but Gemma ties its head: the checkpoint's own lm_head would go unused.
                File.WriteAllText(config, File.ReadAllText(config).Replace("\"llama\"", "\"gemma\""));
                return (dir, [Path.Combine(dir, "model-00001-of-00002.safetensors"), "holds \"lm_head.weight\", a head unlike \"model.embed_tokens.weight\"",
                    config, "model_type gemma ties the head to the embeddings", "another model_type"]);
            case "tied config on an untied checkpoint":
                File.WriteAllText(config, File.ReadAllText(config).Replace("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true"));
                return (dir, ["holds \"lm_head.weight\", a head unlike", config, "says tie_word_embeddings is true"]);
            default: throw new ArgumentException(brokenModel);
        }
    }

    [Theory]
    [MemberData(nameof(BrokenModels))]
    public void BrokenBaseModelIsOneClearErrorFromLibraryAndCli(string brokenModel)
    {
        var (dir, mentions) = Break(brokenModel);
        var e = Assert.Throws<MolaException>(() => ModelLoader.Load(dir));
        log.WriteLine(e.Message);
        foreach (var m in mentions) Assert.Contains(m, e.Message);
        Assert.DoesNotContain('\n', e.Message);

        var run = CliRunner.Run("perplexity", "--base-model", dir, "--data", GoodData(), "--json");
        Assert.Equal(e.Message, run.SingleErrorLine());
    }

    [Fact]
    public void UnbrokenCopiesLoad()
    {
        // The breaking helpers themselves must not break anything: an identity rewrite still loads.
        string dir = TestUtil.CopyFixture("llama-tiny");
        EditHeader(Path.Combine(dir, Shard2), (_, _) => { });
        using (ModelLoader.Load(dir)) { }
        string single = TestUtil.CopyFixture("mistral-tiny");
        RewriteTensors(Path.Combine(single, "model.safetensors"), _ => { });
        using (ModelLoader.Load(single)) { }
    }

    [Fact]
    public void AHuggingFaceCacheSnapshotOfSymbolicLinksLoads()
    {
        // The Hub's cache holds snapshots/<revision>/<file> as links to blobs/<hash>; the fuzz run found that the
        // reader took the link's own length (that of the path it holds) for the file's.
        string blobs = TestUtil.TempDir(), snapshot = TestUtil.TempDir();
        foreach (var file in Directory.GetFiles(TestUtil.Fixture("llama-tiny")))
        {
            string blob = Path.Combine(blobs, Guid.NewGuid().ToString("N"));
            File.Copy(file, blob);
            File.CreateSymbolicLink(Path.Combine(snapshot, Path.GetFileName(file)), blob);
        }
        using var linked = ModelLoader.Load(snapshot);
        using var direct = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        foreach (var ((name, a), (_, b)) in linked.named_parameters().Zip(direct.named_parameters()))
            Assert.True(TestUtil.BitEqual(a, b), name);
    }

    [Fact]
    public void TensorsTheModelDoesNotUseAreOneWarningLine()
    {
        // Old LLaMA checkpoints carry rotary_emb.inv_freq buffers; a tied checkpoint may store its head as a copy of
        // the embeddings. Both load (as in Transformers), and the CLI names them in one warning line.
        string dir = TestUtil.CopyFixture("llama-tiny");
        string config = Path.Combine(dir, "config.json"), index = Path.Combine(dir, Index);
        RewriteTensors(Path.Combine(dir, "model-00001-of-00002.safetensors"), t => t["lm_head.weight"] = t["model.embed_tokens.weight"].clone());
        RewriteTensors(Path.Combine(dir, Shard2), t => t["model.layers.0.self_attn.rotary_emb.inv_freq"] = TorchSharp.torch.ones(8));
        var json = JsonNode.Parse(File.ReadAllText(index))!;
        json["weight_map"]!["model.layers.0.self_attn.rotary_emb.inv_freq"] = Shard2;
        File.WriteAllText(index, json.ToJsonString());
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true"));
        var warnings = new List<string>();
        using (ModelLoader.Load(dir, warn: warnings.Add)) { }
        Assert.Equal([$"warning: {dir}: 2 tensors of the checkpoint not used by model_type llama (lm_head.weight, model.layers.0.self_attn.rotary_emb.inv_freq)"], warnings);

        var run = CliRunner.Run("perplexity", "--base-model", dir, "--data", GoodData(), "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains(warnings[0], run.Stderr.Split('\n'));

        // The fixtures have nothing unused.
        warnings.Clear();
        foreach (var fixture in new[] { "llama-tiny", "mistral-tiny", "gemma-tiny" })
            using (ModelLoader.Load(TestUtil.Fixture(fixture), warn: warnings.Add)) { }
        Assert.Empty(warnings);
    }

    public static TheoryData<string, int, string> BrokenData => new()
    {
        // file contents (lines joined with \n), the line the error must name, what it must say
        { "{\"text\": \"the cell\"}\n\n{\"text\": \"a\"\n", 3, "invalid JSON" },
        { "{\"text\": \"the cell\"}\n{\"text\": 'a'}\n", 2, "invalid JSON" },
        { "{\"text\": \"the cell\"}\n{\"text\": \"a\"} trailing\n", 2, "invalid JSON" },
        { "not json\n", 1, "invalid JSON" },
        { "{\"text\": \"the cell\"}\n[1, 2]\n", 2, "expected a JSON object" },
        { "{\"text\": \"the cell\"}\n{\"txt\": \"a\"}\n", 2, "missing field \"text\" (expected a string)" },
        { "{\"text\": \"the cell\"}\n{\"text\": 3}\n", 2, "key \"text\": expected a string, got 3" },
        // A JSON array: errors name the line an item starts on, counting leading blank lines.
        { "[\n  {\"text\": \"the cell\"},\n  {\"text\": \"a\",}\n]\n", 3, "invalid JSON" },
        { "\n\n[\n  {\"text\": \"the cell\"},\n\n  {\"txt\": \"a\"}\n]\n", 6, "missing field \"text\" (expected a string)" },
        { "[\n  {\"text\": \"the cell\"},\n  \"a\"\n]\n", 3, "expected a JSON object" },
        { "[\n  {\"text\": \"the cell\"}\n]\n]\n", 4, "invalid JSON" },
    };

    [Theory]
    [MemberData(nameof(BrokenData))]
    public void BrokenDataNamesTheLine(string contents, int line, string problem)
    {
        string data = Path.Combine(TestUtil.TempDir(), "data.jsonl");
        File.WriteAllText(data, contents);
        var e = Assert.Throws<MolaException>(() => Perplexity.ReadTexts(data));
        log.WriteLine(e.Message);
        Assert.StartsWith($"{data}:{line}: {problem}", e.Message);
        // The JSON parser counts from line 0 of what it was given; that number must not leak into the message.
        Assert.DoesNotContain("LineNumber", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        var run = CliRunner.Run("perplexity", "--base-model", TestUtil.Fixture("llama-tiny"), "--data", data, "--json");
        Assert.Equal(e.Message, run.SingleErrorLine());
    }

    [Fact]
    public void MissingDataFileIsOneClearError()
    {
        string data = Path.Combine(TestUtil.TempDir(), "absent.jsonl");
        var run = CliRunner.Run("perplexity", "--base-model", TestUtil.Fixture("llama-tiny"), "--data", data);
        Assert.Equal($"{data}: not found", run.SingleErrorLine());
    }

    static string GoodData()
    {
        string path = Path.Combine(TestUtil.TempDir(), "data.jsonl");
        File.WriteAllText(path, "{\"text\": \"the cell divides\"}\n");
        return path;
    }

    static void Shift(JsonNode tensor, long by)
    {
        var off = tensor["data_offsets"]!.AsArray();
        tensor["data_offsets"] = new JsonArray((long)off[0]! + by, (long)off[1]! + by);
    }

    /// <summary>Rewrites a safetensors file through the library's writer after changing its tensors.</summary>
    static void SetConfig(string config, string key, double value)
    {
        var json = JsonNode.Parse(File.ReadAllText(config))!;
        json[key] = value;
        File.WriteAllText(config, json.ToJsonString());
    }

    static void RewriteTensors(string path, Action<Dictionary<string, TorchSharp.torch.Tensor>> change)
    {
        var tensors = TestUtil.ReadAll(path);
        change(tensors);
        SafeTensorsFile.Save(path, tensors);
        foreach (var t in tensors.Values) t.Dispose();
    }

    /// <summary>Edits the JSON header of a safetensors file byte-for-byte, keeping its data (the edit is given
    /// the header and the length of the data).</summary>
    static void EditHeader(string path, Action<JsonObject, long> edit)
    {
        var (header, data) = ReadRaw(path);
        var json = JsonNode.Parse(header)!.AsObject();
        edit(json, data.Length);
        WriteRaw(path, Encoding.UTF8.GetBytes(json.ToJsonString()), data);
    }

    /// <summary>Edits the header as text (for what a JSON object cannot hold: duplicate names, bad escapes).</summary>
    static void EditHeaderText(string path, Func<string, string> edit)
    {
        var (header, data) = ReadRaw(path);
        string before = Encoding.UTF8.GetString(header), after = edit(before);
        Assert.NotEqual(before, after);
        WriteRaw(path, Encoding.UTF8.GetBytes(after), data);
    }

    // The format: an 8-byte little-endian header length, the JSON header, then the data.
    static (byte[] Header, byte[] Data) ReadRaw(string path)
    {
        byte[] file = File.ReadAllBytes(path);
        int n = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        return (file[8..(8 + n)], file[(8 + n)..]);
    }

    static void WriteRaw(string path, byte[] header, byte[] data)
    {
        var length = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        File.WriteAllBytes(path, [.. length, .. header, .. data]);
    }
}
