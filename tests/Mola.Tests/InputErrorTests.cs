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
                return (dir, [index, "missing \"weight_map\" object"]);
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
                return (dir, [shard, "header is not valid JSON"]);
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
                return (dir, [config, "\"tie_word_embeddings\" must be true or false"]);
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

    public static TheoryData<string, int, string> BrokenData => new()
    {
        // file contents (lines joined with \n), the line the error must name, what it must say
        { "{\"text\": \"the cell\"}\n\n{\"text\": \"a\"\n", 3, "invalid JSON" },
        { "{\"text\": \"the cell\"}\n{\"text\": 'a'}\n", 2, "invalid JSON" },
        { "{\"text\": \"the cell\"}\n{\"text\": \"a\"} trailing\n", 2, "invalid JSON" },
        { "not json\n", 1, "invalid JSON" },
        { "{\"text\": \"the cell\"}\n[1, 2]\n", 2, "expected a JSON object" },
        { "{\"text\": \"the cell\"}\n{\"txt\": \"a\"}\n", 2, "missing field \"text\" (expected a string)" },
        { "{\"text\": \"the cell\"}\n{\"text\": 3}\n", 2, "field \"text\" must be a string, not a number" },
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
    static void SetConfig(string config, string key, int value)
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
