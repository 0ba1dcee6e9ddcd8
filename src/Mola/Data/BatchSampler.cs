namespace Mola.Data;

/// <summary>
/// The order of the examples in each epoch and its micro-batches. The order is a pure function of
/// (seed, epoch), so a trainer resumes exactly at (epoch, micro-batch index) by asking for the same
/// epoch again and skipping the micro-batches it has done; no sampler state needs saving.
/// </summary>
public sealed class BatchSampler
{
    readonly int[] _lengths;

    /// <summary>Number of examples.</summary>
    public int Count => _lengths.Length;
    public int MicroBatchSize { get; }
    public int Seed { get; }

    /// <summary>With grouping by length, how many shuffled examples are sorted together; null when not grouping.</summary>
    public int? MegaBatchSize { get; }

    /// <summary>Micro-batches an epoch has; the last is short when the count does not divide evenly.</summary>
    public int MicroBatchesPerEpoch => (Count + MicroBatchSize - 1) / MicroBatchSize;

    /// <param name="lengths">Token count of every example (<see cref="InstructionDataset.Lengths"/>).</param>
    /// <param name="microBatchSize">Examples per forward pass.</param>
    /// <param name="seed">The order depends on it and on the epoch only.</param>
    /// <param name="groupByLength">Put examples of similar length in the same micro-batch (less padding).</param>
    /// <param name="batchSize">The effective batch (micro-batch times gradient accumulation); sets the
    /// mega-batch size as Hugging Face's Trainer does. Default: the micro-batch size.</param>
    public BatchSampler(IReadOnlyList<int> lengths, int microBatchSize, int seed, bool groupByLength = false, int? batchSize = null)
    {
        if (lengths.Count == 0) throw new MolaException("no training examples");
        if (microBatchSize < 1) throw new MolaException(n => $"{n("micro_batch_size")} must be at least 1, got {microBatchSize}");
        int batch = batchSize ?? microBatchSize;
        if (batch < 1) throw new MolaException(n => $"{n("batch_size")} must be at least 1, got {batch}");
        _lengths = lengths.ToArray();
        MicroBatchSize = microBatchSize;
        Seed = seed;
        if (groupByLength)
        {
            // HF's LengthGroupedSampler: 50 batches a mega-batch, or fewer so that there are about 4 mega-batches.
            int perMega = Math.Clamp(Count / (batch * 4), 1, 50);
            MegaBatchSize = perMega * batch;
        }
    }

    /// <summary>Every example index once, in the order of <paramref name="epoch"/> (0-based).</summary>
    public int[] EpochOrder(int epoch)
    {
        if (epoch < 0) throw new ArgumentOutOfRangeException(nameof(epoch), epoch, "epochs count from 0");
        var order = SeededPermutation.Of(Count, Seed, (uint)epoch);
        if (MegaBatchSize is not int mega) return order;
        // Within each mega-batch of the shuffle, longest first (a stable sort: ties keep the shuffled order).
        var megas = order.Chunk(mega).Select(m => m.OrderByDescending(i => _lengths[i]).ToArray()).ToArray();
        // Like HF, swap the longest example of all to the very front, so that an out-of-memory shows on the first step.
        int longest = 0;
        for (int m = 1; m < megas.Length; m++)
            if (_lengths[megas[m][0]] > _lengths[megas[longest][0]]) longest = m;
        (megas[0][0], megas[longest][0]) = (megas[longest][0], megas[0][0]);
        return megas.SelectMany(m => m).ToArray();
    }

    /// <summary>The micro-batches of <paramref name="epoch"/> in order: consecutive runs of <see cref="EpochOrder"/>.</summary>
    public IReadOnlyList<int[]> MicroBatches(int epoch) => EpochOrder(epoch).Chunk(MicroBatchSize).ToList();
}
