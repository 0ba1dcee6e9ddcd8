namespace Mola.Data;

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

    /// <summary>A generator seed that is a function of (seed, stream, index) alone: the same in every process and
    /// after a resume, whatever ran before (the dropout of micro-batch <paramref name="index"/> of an epoch).</summary>
    public static long DerivedSeed(int seed, uint stream, long index) =>
        (long)(Mix(Mix(((ulong)(uint)seed << 32) | stream) ^ (ulong)index) >> 1);

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
