using Mola.Cli;
using Mola.Generation;
using Mola.Models;
using Mola.Tokenization;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>Finding 3 of the fault run: values that reached libtorch and came back as a C++ stack trace are refused
/// up front with the option named, and whatever libtorch still throws is one line at the CLI boundary.</summary>
[Trait("Category", "Slow")]
public class NativeErrorTests
{
    static readonly string Llama = TestUtil.Fixture("llama-tiny");

    [Theory]
    [InlineData("--temperature", "NaN")]
    [InlineData("--temperature", "1e-300")]     // 0 in float32: the logits divided into NaN
    [InlineData("--temperature", "Infinity")]
    [InlineData("--temperature", "1e300")]      // infinite in float32
    [InlineData("--temperature", "-1")]
    [InlineData("--top-p", "1e-300")]           // 0 in float32: every token dropped
    [InlineData("--top-p", "NaN")]              // passed the range check before (NaN compares false)
    [InlineData("--top-p", "0")]
    public void SamplingValuesThatAreNotFinitePositiveFloat32AreRefusedNamingTheOption(string option, string value)
    {
        var r = CliRunner.Run("generate", "--base-model", Llama, "--prompt", "the cell", "--max-new-tokens", "3", option, value);
        string error = r.SingleErrorLine();
        Assert.StartsWith(option + " must be", error);
        Assert.DoesNotContain("frame #", r.Stderr);
    }

    [Fact]
    public void TinyTemperatureAndNucleusThatFloat32HoldsDecodeGreedily()
    {
        // The independent figure: the greedy continuation. As the temperature or top-p goes to 0, sampling is argmax.
        using var model = ModelLoader.Load(Llama);
        var tok = MolaTokenizer.Load(Llama);
        List<int>[] prompts = [tok.Encode("the cell energy", bos: true)];
        var greedy = TextGenerator.Generate(model, prompts, new GenerationOptions { MaxNewTokens = 8 }, eosId: -1);
        var sampled = new GenerationOptions { MaxNewTokens = 8, Greedy = false, Seed = 3 };
        Assert.Equal(greedy, TextGenerator.Generate(model, prompts, sampled with { Temperature = 1e-30 }, eosId: -1));
        Assert.Equal(greedy, TextGenerator.Generate(model, prompts, sampled with { TopP = 1e-40 }, eosId: -1));
    }

    [Fact]
    public void APromptPastThePositionsIsRefusedOrTruncatedOnlyWhenAsked()
    {
        string prompt = string.Concat(Enumerable.Repeat("the cell ", 200));
        var tok = MolaTokenizer.Load(Llama);
        var ids = tok.Encode(prompt, bos: true);
        int positions = ModelConfig.Load(Llama).MaxPositionEmbeddings;
        Assert.True(ids.Count > positions);

        var refused = CliRunner.Run("generate", "--base-model", Llama, "--prompt", prompt, "--max-new-tokens", "3");
        Assert.Equal($"the prompt is {ids.Count} tokens, past the model's {positions} positions (max_position_embeddings); " +
            "shorten it, or give --truncate-prompt to keep its last tokens", refused.SingleErrorLine());

        var cut = CliRunner.Run("generate", "--base-model", Llama, "--prompt", prompt, "--max-new-tokens", "3", "--truncate-prompt", "--json");
        Assert.True(cut.ExitCode == 0, cut.ToString());
        var all = cut.LastJson().GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
        // BOS, then the prompt's last tokens, leaving room for the 3 new ones within the positions.
        int kept = positions - 3;
        Assert.Equal([ids[0], .. ids[^(kept - 1)..]], all.Take(kept));
        Assert.True(all.Count <= positions);
    }

    [Fact]
    public void ALibtorchErrorIsOneLineWithoutTheNativeTraceOrTheTypeName()
    {
        // A real libtorch failure (what --temperature NaN led to): its message carries "Exception raised from ..."
        // and C++ frames after the first line.
        var e = Assert.ThrowsAny<Exception>(() =>
        {
            using var probs = tensor(new[] { float.NaN, 1f });
            using var draw = multinomial(probs, 1);
        });
        Assert.Contains('\n', e.Message);
        string line = Cli.Cli.Unexpected(e);
        Assert.DoesNotContain('\n', line);
        Assert.DoesNotContain("frame #", line);
        Assert.DoesNotContain("Exception", line);
        Assert.StartsWith("libtorch: " + e.Message.Split('\n')[0].Trim().TrimEnd('.'), line);
        Assert.EndsWith("(an unexpected failure; set MOLA_DEBUG=1 for the full trace)", line);
    }

    [Fact]
    public void AnAllocationLibtorchRefusesReachesTheUserAsOneLine()
    {
        // 4 TB for the matmul-rate matrices: libtorch's allocator fails at once (C++ frames in its message).
        var r = CliRunner.Run("bench", "--hidden", "1000000", "--quick");
        Assert.NotEqual(0, r.ExitCode);
        var errors = r.Stderr.Split('\n').Where(l => l.StartsWith("error: ", StringComparison.Ordinal)).ToList();
        Assert.Single(errors);
        Assert.DoesNotContain("frame #", r.Stderr);
        Assert.DoesNotContain("Exception", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }
}

/// <summary>Empty output paths (finding 4: they failed with an unnamed exception).</summary>
[Trait("Category", "Slow")]
public class PromptAndPathTests
{
    [Theory]
    [InlineData("eval")]
    [InlineData("analyze")]
    public void AnEmptyOutputPathIsNamed(string command)
    {
        string[] args = command == "eval"
            ? ["eval", "--base-model", TestUtil.Fixture("llama-tiny"), "--data", Path.Combine(TestUtil.ExamplesDir(), "rte.json"), "--task", "rte", "--output", ""]
            : ["analyze", "--adapter", TestUtil.Fixture("llama-tiny-mola"), "--output", ""];
        Assert.Equal(command == "eval" ? "--output: empty (expected a file path)" : "--output: empty (expected a directory path)", CliRunner.Run(args).SingleErrorLine());
    }
}
