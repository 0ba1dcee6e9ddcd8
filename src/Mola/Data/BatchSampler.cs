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
        if (microBatchSize < 1) throw new MolaException($"--micro-batch-size must be at least 1, got {microBatchSize}");
        int batch = batchSize ?? microBatchSize;
        if (batch < 1) throw new MolaException($"--batch-size must be at least 1, got {batch}");
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

/// <summary>
/// Seeded permutations of our own (Fisher-Yates over SplitMix64) rather than <see cref="Random"/>, whose
/// sequence .NET does not promise to keep: a checkpoint must replay the same order on any runtime.
/// </summary>
static class SeededPermutation
{
    /// <summary>The stream of the train/validation split; epochs use streams 0, 1, 2...</summary>
    public const uint SplitStream = uint.MaxValue;

    public static int[] Of(int n, int seed, uint stream)
    {
        ulong state = Mix(((ulong)(uint)seed << 32) | stream);
        var p = Enumerable.Range(0, n).ToArray();
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)Below(ref state, (ulong)i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }

    static ulong Next(ref ulong state) => Mix(state += 0x9E3779B97F4A7C15);

    static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, bound): rejects the few values that would bias the remainder.</summary>
    static ulong Below(ref ulong state, ulong bound)
    {
        ulong threshold = (0 - bound) % bound;
        while (true)
        {
            ulong r = Next(ref state);
            if (r >= threshold) return r % bound;
        }
    }
}
