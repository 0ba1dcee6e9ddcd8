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
        // The human table went to stderr, so stdout holds the result object alone.
        Assert.Contains("mola_loop", run.Stderr);
    }

    [Fact]
    public void BadShapeIsAUserError()
    {
        var message = CliRunner.Run("bench", "--quick", "--top-k", "9", "--experts", "8").SingleErrorLine();
        Assert.Contains("--top-k", message);
    }
}
