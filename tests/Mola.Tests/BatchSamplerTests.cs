using Mola.Data;
using Xunit;

namespace Mola.Tests;

public class BatchSamplerTests
{
    // Lengths with many ties and a clear maximum (index 37), fixed so the test is deterministic.
    static readonly int[] Lengths = Enumerable.Range(0, 100).Select(i => i == 37 ? 500 : 20 + (i * 7919) % 61).ToArray();

    [Fact]
    public void EpochOrderIsAPermutationAndAFunctionOfSeedAndEpochOnly()
    {
        var a = new BatchSampler(Lengths, microBatchSize: 8, seed: 5);
        var b = new BatchSampler(Lengths, microBatchSize: 8, seed: 5);
        _ = a.EpochOrder(3);   // asking for other epochs first changes nothing (no hidden state)

        Assert.Equal(Enumerable.Range(0, 100), a.EpochOrder(0).Order());
        Assert.Equal(a.EpochOrder(1), b.EpochOrder(1));
        Assert.NotEqual(a.EpochOrder(0), a.EpochOrder(1));
        Assert.NotEqual(a.EpochOrder(0), new BatchSampler(Lengths, 8, seed: 6).EpochOrder(0));
        Assert.NotEqual(Enumerable.Range(0, 100), a.EpochOrder(0));
    }

    [Fact]
    public void MicroBatchesAreConsecutiveRunsOfTheEpochOrder()
    {
        var s = new BatchSampler(Lengths.Take(10).ToArray(), microBatchSize: 4, seed: 1);
        var batches = s.MicroBatches(2);
        Assert.Equal(3, s.MicroBatchesPerEpoch);
        Assert.Equal(new[] { 4, 4, 2 }, batches.Select(b => b.Length));
        Assert.Equal(s.EpochOrder(2), batches.SelectMany(b => b));
    }

    [Fact]
    public void GroupingByLengthSortsEachMegaBatchLongestFirst()
    {
        // Effective batch 4: HF's mega-batch is min(100 / (4 * 4), 50) = 6 batches = 24 examples.
        var s = new BatchSampler(Lengths, microBatchSize: 2, seed: 9, groupByLength: true, batchSize: 4);
        Assert.Equal(24, s.MegaBatchSize);
        var order = s.EpochOrder(0);

        Assert.Equal(Enumerable.Range(0, 100), order.Order());
        Assert.Equal(37, order[0]);                                                      // the longest comes first
        var megas = order.Chunk(24).ToList();
        Assert.True(IsNonIncreasing(megas[0].Select(i => Lengths[i])));
        foreach (var m in megas)                                                         // a mega-batch's head may be the swapped one
            Assert.True(IsNonIncreasing(m.Skip(1).Select(i => Lengths[i])));
        Assert.Equal(order, new BatchSampler(Lengths, 2, seed: 9, groupByLength: true, batchSize: 4).EpochOrder(0));
        Assert.NotEqual(order, s.EpochOrder(1));
        Assert.False(IsNonIncreasing(order.Select(i => Lengths[i])));                   // sorted within mega-batches, not globally
    }

    [Fact]
    public void SmallDataSetsGroupInOneBatchSizedMegaBatch()
    {
        var s = new BatchSampler(Lengths.Take(10).ToArray(), microBatchSize: 2, seed: 0, groupByLength: true, batchSize: 4);
        Assert.Equal(4, s.MegaBatchSize);
        Assert.Null(new BatchSampler(Lengths, 2, seed: 0).MegaBatchSize);
    }

    static bool IsNonIncreasing(IEnumerable<int> xs)
    {
        var list = xs.ToList();
        return list.Zip(list.Skip(1)).All(p => p.First >= p.Second);
    }
}
