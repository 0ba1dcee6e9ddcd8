using System.Text.Json;
using Xunit;

namespace Mola.Tests;

/// <summary>`mola bench` is a measurement, not a test: this only checks that the smoke run completes and reports
/// every field as a positive number. No time is ever asserted.</summary>
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
