using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Data;

/// <summary>A padded batch: ids, 1/0 attention mask and labels (-100 on padding).</summary>
public sealed record Batch(Tensor InputIds, Tensor AttentionMask, Tensor Labels) : IDisposable
{
    public void Dispose()
    {
        InputIds.Dispose();
        AttentionMask.Dispose();
        Labels.Dispose();
    }
}

public static class Batching
{
    /// <summary>Right-pads sequences to the longest; labels are the ids (or <paramref name="labels"/>) with -100 on padding.</summary>
    public static Batch PadRight(IReadOnlyList<IReadOnlyList<int>> seqs, int padId, Device device, IReadOnlyList<IReadOnlyList<long>>? labels = null)
    {
        int B = seqs.Count, T = seqs.Max(s => s.Count);
        var ids = new long[B * T];
        var mask = new long[B * T];
        var lab = new long[B * T];
        Array.Fill(ids, padId);
        Array.Fill(lab, Losses.IgnoreIndex);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < seqs[b].Count; t++)
            {
                ids[b * T + t] = seqs[b][t];
                mask[b * T + t] = 1;
                lab[b * T + t] = labels is null ? seqs[b][t] : labels[b][t];
            }
        return new Batch(tensor(ids, [B, T], device: device), tensor(mask, [B, T], device: device), tensor(lab, [B, T], device: device));
    }

    /// <summary>Left-pads sequences (for generation: every row ends at the same position).</summary>
    public static (Tensor Ids, Tensor Mask) PadLeft(IReadOnlyList<List<int>> seqs, int padId, Device device)
    {
        int B = seqs.Count, T = seqs.Max(s => s.Count);
        var ids = new long[B * T];
        var mask = new long[B * T];
        Array.Fill(ids, padId);
        for (int b = 0; b < B; b++)
        {
            int off = T - seqs[b].Count;
            for (int t = 0; t < seqs[b].Count; t++)
            {
                ids[b * T + off + t] = seqs[b][t];
                mask[b * T + off + t] = 1;
            }
        }
        return (tensor(ids, [B, T], device: device), tensor(mask, [B, T], device: device));
    }
}
