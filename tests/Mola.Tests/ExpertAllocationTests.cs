using Mola.Adapters;
using Xunit;

namespace Mola.Tests;

public class ExpertAllocationTests
{
    static int[] Groups(int layers, params int[] values) =>
        values.SelectMany(v => Enumerable.Repeat(v, layers / values.Length)).ToArray();

    [Fact]
    public void SingleValueFillsEveryLayer()
    {
        Assert.Equal(Enumerable.Repeat(8, 32), ExpertAllocation.Parse("8", 32, "--experts"));
        Assert.Equal(Enumerable.Repeat(16, 32), ExpertAllocation.Parse("16", 32, "--rank"));   // a number, not the pattern 1,6
        Assert.Equal(Enumerable.Repeat(128, 32), ExpertAllocation.Parse(" 128 ", 32, "--rank"));
    }

    [Fact]
    public void OneValuePerLayer()
    {
        Assert.Equal([2, 4, 8], ExpertAllocation.Parse("2,4,8", 3, "--experts"));
        int[] perLayer = Enumerable.Range(1, 32).ToArray();
        Assert.Equal(perLayer, ExpertAllocation.Parse(string.Join(",", perLayer), 32, "--experts"));
        // A compact string as long as the layer count is per layer.
        Assert.Equal([2, 2, 4, 4, 6, 6, 8, 8], ExpertAllocation.Parse("22446688", 8, "--experts"));
    }

    [Fact]
    public void GroupPatternsRepeatEachValueOverTheirShareOfLayers()
    {
        int[] want = [.. Enumerable.Repeat(2, 8), .. Enumerable.Repeat(4, 8), .. Enumerable.Repeat(6, 8), .. Enumerable.Repeat(8, 8)];
        Assert.Equal(want, ExpertAllocation.Parse("2468", 32, "--experts"));
        Assert.Equal(want, ExpertAllocation.Parse("2,4,6,8", 32, "--experts"));
        Assert.Equal(want, ExpertAllocation.Parse(" 2, 4 ,6,8 ", 32, "--experts"));
        Assert.Equal([2, 2, 2, 6, 6, 6], ExpertAllocation.Parse("2,6", 6, "--experts"));
        Assert.Equal([10, 10, 12, 12], ExpertAllocation.Parse("10,12", 4, "--experts"));
        Assert.Equal(Groups(24, 1, 2, 1, 2, 1, 2, 1, 2), ExpertAllocation.Parse("12121212", 24, "--top-k"));
    }

    [Fact]
    public void PresetsAreThePapersShapes()
    {
        Assert.Equal(Groups(32, 2, 4, 6, 8), ExpertAllocation.Parse("inverted-triangle", 32, "--experts"));
        Assert.Equal(Groups(32, 8, 6, 4, 2), ExpertAllocation.Parse("triangle", 32, "--experts"));
        Assert.Equal(Groups(32, 8, 2, 2, 8), ExpertAllocation.Parse("Hourglass", 32, "--experts"));
        Assert.Equal(Groups(32, 2, 8, 8, 2), ExpertAllocation.Parse("diamond", 32, "--experts"));
        Assert.Equal(Groups(28, 2, 4, 6, 8), ExpertAllocation.Parse("inverted-triangle", 28, "--experts"));
        Assert.Equal(Enumerable.Repeat(5, 32), ExpertAllocation.Parse("square:5", 32, "--experts"));
        Assert.Equal(Enumerable.Repeat(5, 3), ExpertAllocation.Parse("square:5", 3, "--experts"));   // uniform fits any layer count
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("   ", "empty")]
    [InlineData("abc", "\"abc\" is not a positive integer")]
    [InlineData("2,x,6,8", "\"x\" is not a positive integer")]
    [InlineData("2.5", "\"2.5\" is not a positive integer")]
    [InlineData("0", "0 is not allowed")]
    [InlineData("2,0,6,8", "0 is not allowed")]
    [InlineData("2068", "0 is not allowed")]
    [InlineData("-2", "\"-2\" is not a positive integer")]
    [InlineData("2,-4,6,8", "\"-4\" is not a positive integer")]
    [InlineData("2,,6,8", "empty value")]
    [InlineData("2,4,6,", "empty value")]
    [InlineData("2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2,4,6,8,2", "33 values, but the model has 32 layers")]
    [InlineData("square", "needs its value")]
    [InlineData("square:0", "0 is not allowed")]
    [InlineData("square:x", "\"x\" is not a positive integer")]
    [InlineData("pyramid", "presets: square:N, inverted-triangle, triangle, hourglass, diamond")]
    public void BadSpecsSayWhy(string spec, string why)
    {
        var e = Assert.Throws<MolaException>(() => ExpertAllocation.Parse(spec, 32, "--experts"));
        Assert.StartsWith("--experts", e.Message);
        Assert.Contains(why, e.Message);
    }

    [Theory]
    [InlineData("246", "2,4,6")]
    [InlineData("88", "8,8")]
    public void ABareExpertCountAboveTheLimitIsReadAsAMistypedPattern(string spec, string suggestion)
    {
        var e = Assert.Throws<MolaException>(() => ExpertAllocation.ParseExperts(spec, 32, "--experts"));
        Assert.StartsWith($"--experts {spec}: {spec} experts in every layer?", e.Message);
        Assert.Contains($"write {suggestion} ", e.Message);
        Assert.Contains($"square:{spec}", e.Message);
        // The limit itself, longer patterns, square:N and ranks are untouched.
        Assert.Equal(64, ExpertAllocation.ParseExperts("64", 32, "--experts")[0]);
        Assert.Equal(new[] { 2, 4, 6, 8 }, ExpertAllocation.ParseExperts("2468", 4, "--experts"));
        Assert.Equal(128, ExpertAllocation.ParseExperts("square:128", 32, "--experts")[0]);
        Assert.Equal(int.Parse(spec), ExpertAllocation.Parse(spec, 32, "--rank")[0]);
    }

    [Fact]
    public void AOneLayerModelIsOneLayerInTheMessage()
    {
        var e = Assert.Throws<MolaException>(() => ExpertAllocation.Parse("2468", 1, "--allocation"));
        Assert.Contains("4 values, but the model has 1 layer (", e.Message);
    }

    // Layer counts of real models that four groups do not divide: TinyLlama-1.1B (22), Gemma-2B (18),
    // Llama-2-13B (40 does divide), Gemma-7B (28, the paper's 7/7/7/7), and odd leftovers.
    [Theory]
    [InlineData(22, new[] { 6, 5, 5, 6 })]
    [InlineData(18, new[] { 5, 4, 4, 5 })]
    [InlineData(28, new[] { 7, 7, 7, 7 })]
    [InlineData(40, new[] { 10, 10, 10, 10 })]
    [InlineData(21, new[] { 6, 5, 5, 5 })]
    [InlineData(23, new[] { 6, 6, 5, 6 })]
    [InlineData(4, new[] { 1, 1, 1, 1 })]
    public void FourGroupsSplitAnyLayerCountNearEquallyOutermostFirst(int layers, int[] sizes)
    {
        Assert.Equal(sizes, ExpertAllocation.GroupSizes(layers, 4));
        int[] want = [.. Enumerable.Repeat(2, sizes[0]), .. Enumerable.Repeat(4, sizes[1]), .. Enumerable.Repeat(6, sizes[2]), .. Enumerable.Repeat(8, sizes[3])];
        Assert.Equal(want, ExpertAllocation.Parse("inverted-triangle", layers, "--experts"));
        Assert.Equal(want, ExpertAllocation.Parse("2468", layers, "--experts"));
        Assert.Equal(want, ExpertAllocation.Parse("2,4,6,8", layers, "--experts"));
    }

    [Fact]
    public void AnEvenLeftoverKeepsMirrorShapesAtTheSameBudget()
    {
        // 22 layers: 2468 and 8642 both give 2*6 + 4*5 + 6*5 + 8*6 = 110 experts per module, 8228 and 2882 differ.
        Assert.Equal(110, ExpertAllocation.Parse("inverted-triangle", 22, "--experts").Sum());
        Assert.Equal(110, ExpertAllocation.Parse("triangle", 22, "--experts").Sum());
        Assert.Equal(8 * 6 + 2 * 5 + 2 * 5 + 8 * 6, ExpertAllocation.Parse("hourglass", 22, "--experts").Sum());
        Assert.Equal(2 * 6 + 8 * 5 + 8 * 5 + 2 * 6, ExpertAllocation.Parse("diamond", 22, "--experts").Sum());
    }

    [Fact]
    public void OtherGroupCountsSplitTheSameWay()
    {
        Assert.Equal([3, 2, 3], ExpertAllocation.GroupSizes(8, 3));
        Assert.Equal([2, 2, 1, 2, 2], ExpertAllocation.GroupSizes(9, 5));
        Assert.Equal([1, 1, 1, 2, 2, 3, 3], ExpertAllocation.Parse("1,2,3", 7, "--rank"));
        Assert.Equal([1, 1, 2, 3, 3], ExpertAllocation.Parse("1,2,3", 5, "--rank"));
    }

    [Fact]
    public void AShapedPresetNeedsAsManyLayersAsGroups()
    {
        var e = Assert.Throws<MolaException>(() => ExpertAllocation.Parse("hourglass", 3, "--experts"));
        Assert.Contains("4 groups of layers", e.Message);
        Assert.Contains("3 layers", e.Message);
    }

    [Fact]
    public void MoreValuesThanLayersNamesBothNumbers()
    {
        var e = Assert.Throws<MolaException>(() => ExpertAllocation.Parse("2,4,6,8,2,4,6,8", 6, "--rank"));
        Assert.StartsWith("--rank", e.Message);
        Assert.Contains("8 values", e.Message);
        Assert.Contains("6 layers", e.Message);
    }

    [Fact]
    public void ValidateNamesTheFirstLayerWhereTopKExceedsTheExperts()
    {
        int[] experts = [2, 2, 4, 4], rank = [8, 8, 8, 8];
        ExpertAllocation.Validate(experts, [2, 2, 2, 2], rank);   // k == E is fine
        var e = Assert.Throws<MolaException>(() => ExpertAllocation.Validate(experts, [1, 3, 3, 3], rank));
        Assert.StartsWith("layer 1:", e.Message);
        Assert.Contains("top-k 3", e.Message);
        Assert.Contains("2 experts", e.Message);
    }

    [Fact]
    public void ValidateRejectsRankBelowOneAndMismatchedLengths()
    {
        var e = Assert.Throws<MolaException>(() => ExpertAllocation.Validate([2, 2], [1, 1], [8, 0]));
        Assert.StartsWith("layer 1:", e.Message);
        Assert.Contains("rank 0", e.Message);
        Assert.Throws<MolaException>(() => ExpertAllocation.Validate([2, 2], [1, 1], [8]));
    }

    [Fact]
    public void DescribePrintsRunsAsValueTimesLayers()
    {
        Assert.Equal("2x8, 4x8, 6x8, 8x8", ExpertAllocation.Describe(Groups(32, 2, 4, 6, 8)));
        Assert.Equal("8x32", ExpertAllocation.Describe(Enumerable.Repeat(8, 32).ToArray()));
        Assert.Equal("2x1, 4x1, 8x1", ExpertAllocation.Describe([2, 4, 8]));
        Assert.Equal("8x1, 2x2, 8x1", ExpertAllocation.Describe([8, 2, 2, 8]));
    }
}
