using System.Text.Json;
using Xunit;

namespace Mola.Tests;

/// <summary>`mola bench` is a measurement, not a test: this only checks that the smoke run completes and reports
/// every field as a positive number, with the operation counts of the products it times one by one. No time is
/// ever asserted.</summary>
[Trait("Category", "Slow")]
public class BenchCommandTests
{
    [Fact]
    public void QuickRunReportsEveryFieldAsAPositiveNumber()
    {
        var run = CliRunner.Run(["bench", "--quick", "--json"], TimeSpan.FromSeconds(120));
        Assert.True(run.ExitCode == 0, run.ToString());
        var json = run.LastJson();

        void Positive(JsonElement parent, string name)
        {
            Assert.True(parent.TryGetProperty(name, out var v), $"missing \"{name}\" in {parent}");
            Assert.True(v.ValueKind == JsonValueKind.Number && v.GetDouble() > 0, $"\"{name}\" is {v}, expected a positive number");
        }
        var layer = json.GetProperty("layer");
        foreach (var f in new[] { "frozen_ms", "lora_ms", "mola_ms", "mola_loop_ms" }) Positive(layer, f);
        var step = json.GetProperty("step");
        foreach (var f in new[] { "frozen_ms", "lora_ms", "mola_ms", "tokens_per_second" }) Positive(step, f);
        Positive(json, "matmul_gflops");
        Positive(json, "generate_tokens_per_second");

        var shapes = json.GetProperty("shapes");
        foreach (var f in new[] { "tokens", "hidden", "experts", "top_k", "rank" }) Positive(shapes.GetProperty("layer"), f);
        foreach (var f in new[] { "layers", "hidden", "intermediate", "tokens", "vocab" }) Positive(shapes.GetProperty("step"), f);
        Assert.Equal(JsonValueKind.Array, shapes.GetProperty("step").GetProperty("experts").ValueKind);
        // The products one by one: the quick layer is N 128 tokens, D 512, E 8 experts of rank 8, so the
        // router and experts make c = 72 rows and the experts q = 64 columns; operations counted by hand.
        var floor = json.GetProperty("layer_floor");
        var expected = new (string Name, double Flop)[]
        {
            ("frozen: x W^T", 2.0 * 128 * 512 * 512),
            ("frozen: g W (dX)", 2.0 * 128 * 512 * 512),
            ("x [R;A]^T", 2.0 * 128 * 512 * 72),
            ("y += h B^T", 2.0 * 128 * 64 * 512),
            ("g B (dh)", 2.0 * 128 * 512 * 64),
            ("h^T g (dB)", 2.0 * 64 * 128 * 512),
            ("dh^T x (d[R;A])", 2.0 * 72 * 128 * 512),
            ("dh [R;A] (dX)", 2.0 * 128 * 72 * 512),
            ("dX + dX (accumulate)", 0),
        };
        var ops = floor.GetProperty("ops").EnumerateArray().ToList();
        Assert.Equal(expected.Select(e => e.Name), ops.Select(op => op.GetProperty("name").GetString()));
        Assert.Equal(expected.Select(e => e.Flop), ops.Select(op => op.GetProperty("flop").GetDouble()));
        foreach (var op in ops) Positive(op, "ms");
        double frozenMs = ops.Take(2).Sum(op => op.GetProperty("ms").GetDouble());
        double extraMs = ops.Skip(2).Sum(op => op.GetProperty("ms").GetDouble());
        Assert.Equal(frozenMs, floor.GetProperty("frozen_products_ms").GetDouble(), 1e-9);
        Assert.Equal(extraMs, floor.GetProperty("mola_extra_ms").GetDouble(), 1e-9);
        // The floor is the frozen layer as measured plus MoLA's extra products, on the same frozen layer.
        double layerFrozen = layer.GetProperty("frozen_ms").GetDouble();
        Assert.Equal(layerFrozen + extraMs, floor.GetProperty("floor_ms").GetDouble(), 1e-9);
        Assert.Equal((layerFrozen + extraMs) / layerFrozen, floor.GetProperty("floor_ratio").GetDouble(), 1e-9);
        Assert.Contains("floor:", run.Stderr);

        // The step's operations, counted by hand for the quick decoder: 2 layers, hidden 256 (2 heads of 128),
        // intermediate 704, vocab 512, 128 tokens. Linear weights per layer 4 x 256^2 + 3 x 256 x 704 = 802,816, with
        // the head 2 x 802,816 + 512 x 256 = 1,736,704; forward and input gradient 4 x weights x tokens; causal
        // attention 6 x 128^2 x 256 per layer. LoRA r 8 on all seven modules: 8 x (in + out) per module,
        // 8 x (4 x 512 + 3 x 960) = 39,424 per layer; MoLA 2,4 experts: E x that plus E x in for the router
        // (in: 256 for six modules, 704 for down_proj: 2240 per expert). The adapter's products: 6 x weights x tokens.
        var stepRun = json.GetProperty("runs")[0];
        Assert.Equal("float32", stepRun.GetProperty("dtype").GetString());
        var stepFlop = stepRun.GetProperty("step");
        double frozen = 4.0 * 1_736_704 * 128 + 2 * 6.0 * 128 * 128 * 256;
        double loraWeights = 2 * 39_424, molaWeights = (2 + 4) * (39_424 + 2240);
        Assert.Equal(frozen, stepFlop.GetProperty("frozen_flop").GetDouble());
        Assert.Equal(frozen + 6.0 * loraWeights * 128, stepFlop.GetProperty("lora_flop").GetDouble());
        Assert.Equal(frozen + 6.0 * molaWeights * 128, stepFlop.GetProperty("mola_flop").GetDouble());
        // The matmul rate is timed in the step's rounds: the quick layer shape's product is 128 x 512 x 512, repeated
        // round(frozen / product / 2) times a round; the utilisation is the median over rounds of the share in a round
        // (two rounds: their mean).
        double product = 2.0 * 128 * 512 * 512, matmulFlop = Math.Round(frozen / product / 2) * product;
        Assert.Equal(matmulFlop, stepFlop.GetProperty("matmul_flop").GetDouble());
        var rounds = stepFlop.GetProperty("rounds");
        double[] Ms(string name) => [.. rounds.GetProperty(name).EnumerateArray().Select(e => e.GetDouble())];
        double[] stepMs = Ms("frozen_ms"), matmulMs = Ms("matmul_ms");
        Assert.Equal(2, stepMs.Length);
        Assert.Equal(2, matmulMs.Length);
        double Share(int i) => frozen / stepMs[i] / (matmulFlop / matmulMs[i]);
        Assert.Equal((Share(0) + Share(1)) / 2, stepFlop.GetProperty("frozen_utilisation").GetDouble(), 1e-9);
        Assert.Equal(matmulFlop / ((matmulMs[0] + matmulMs[1]) / 2) / 1e6, stepRun.GetProperty("matmul_gflops").GetDouble(), 1e-6);
        Assert.Equal((stepMs[0] + stepMs[1]) / 2, stepFlop.GetProperty("frozen_ms").GetDouble(), 1e-9);
        // Decoding reads each linear weight once per token, 4 bytes in float32; MoLA adds its float32 weights.
        var decode = stepRun.GetProperty("decode");
        Assert.Equal(4.0 * 1_736_704, decode.GetProperty("base_bytes_per_token").GetDouble());
        Assert.Equal(4.0 * (1_736_704 + molaWeights), decode.GetProperty("mola_bytes_per_token").GetDouble());
        foreach (var f in new[] { "base_tokens_per_second", "mola_tokens_per_second", "read_gb_per_second", "base_bandwidth_share", "prefill_tokens_per_second" })
            Positive(decode, f);
        // The human table went to stderr, so stdout holds the result object alone.
        Assert.Contains("mola_loop", run.Stderr);
    }

    /// <summary>The side-by-side: llama.cpp decodes and prefills the bench's weights; with one round each ratio is exactly
    /// mola's tokens/s over llama.cpp's, both printed in the same run.</summary>
    [Fact]
    public void AgainstLlamaCppReportsItsSpeedsAndTheRatios()
    {
        var run = CliRunner.Run(["bench", "--quick", "--against", "llama.cpp", "--json"], TimeSpan.FromSeconds(180));
        Assert.True(run.ExitCode == 0, run.ToString());
        var stepRun = run.LastJson().GetProperty("runs")[0];
        var decode = stepRun.GetProperty("decode");
        var against = stepRun.GetProperty("against");
        Assert.Equal("llama.cpp", against.GetProperty("program").GetString());
        Assert.Equal("f16", against.GetProperty("gguf_type").GetString());
        double theirs = against.GetProperty("decode_tokens_per_second").GetDouble(), theirPrefill = against.GetProperty("prefill_tokens_per_second").GetDouble();
        Assert.True(theirs > 0 && theirPrefill > 0, against.ToString());
        Assert.Equal(decode.GetProperty("base_tokens_per_second").GetDouble() / theirs, against.GetProperty("decode_mola_over_program").GetDouble(), 1e-9);
        Assert.Equal(decode.GetProperty("prefill_tokens_per_second").GetDouble() / theirPrefill, against.GetProperty("prefill_mola_over_program").GetDouble(), 1e-9);
        Assert.Equal(against.GetProperty("decode_mola_over_program").GetDouble(), stepRun.GetProperty("ratios").GetProperty("decode_mola_over_llama_cpp").GetDouble());
        Assert.Contains("llama.cpp (GGUF F16, same weights, alternating)", run.Stderr);
    }

    [Fact]
    public void UnknownProgramToCompareAgainstIsAUserError()
    {
        var message = CliRunner.Run("bench", "--quick", "--against", "vllm").SingleErrorLine();
        Assert.Contains("--against vllm", message);
        Assert.Contains("llama.cpp", message);
    }

    [Fact]
    public void BadShapeIsAUserError()
    {
        var message = CliRunner.Run("bench", "--quick", "--top-k", "9", "--experts", "8").SingleErrorLine();
        Assert.Contains("--top-k", message);
    }

    [Fact]
    public void UnknownShapeIsAUserError()
    {
        var message = CliRunner.Run("bench", "--shape", "gpt-5").SingleErrorLine();
        Assert.Contains("--shape gpt-5", message);
        Assert.Contains("tinyllama-1.1b", message);
    }
}
