using System.Buffers.Binary;
using System.Numerics;
using Mola.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Training.Monitoring;

/// <summary>
/// <c>--report-to tensorboard</c>: TensorBoard event files under <c>RUN/tensorboard/</c>, written with TorchSharp's
/// <c>SummaryWriter</c>: the scalars of every metrics.jsonl line (<c>train/loss</c>, <c>train/ce_loss</c>,
/// <c>train/aux_loss</c>, <c>train/lr</c>, <c>train/grad_norm</c>, <c>train/tokens_per_second</c>,
/// <c>eval/loss</c>) and, for a MoLA adapter, each layer's expert usage in the step as a histogram of the chosen
/// experts' indices (<c>experts/layer_NN</c>; every token's top-k choices over the layer's modules). A resumed run
/// writes a second event file that starts with a SessionLog START event at the resume step, as PyTorch's
/// <c>SummaryWriter(purge_step=...)</c> does: TensorBoard then drops what the interrupted run logged from that step on,
/// so the steps between its last checkpoint and the kill do not show twice.
/// </summary>
public sealed class TensorBoardSink : IMetricsSink
{
    readonly TorchSharp.Modules.SummaryWriter _writer;
    readonly AdapterModel _adapter;
    readonly ExpertUsage? _usage;

    readonly string _file;

    public TensorBoardSink(string runDirectory, AdapterModel adapter)
    {
        Directory = Path.Combine(runDirectory, "tensorboard");
        System.IO.Directory.CreateDirectory(Directory);
        // The writer does not say which file it writes; it is the one its constructor adds (with the file_version event).
        var before = System.IO.Directory.GetFiles(Directory).ToHashSet();
        _writer = torch.utils.tensorboard.SummaryWriter(Directory);
        _file = System.IO.Directory.GetFiles(Directory).Single(f => !before.Contains(f));
        _adapter = adapter;
        if (adapter.Config.Kind == AdapterKind.Mola)
        {
            _usage = new ExpertUsage(adapter.Config.NumExperts);
            adapter.SetRoutingObserver(_usage);
        }
    }

    public string Directory { get; }

    /// <summary>On a resume from step <paramref name="step"/>, the SessionLog START event at the first step this run logs,
    /// step + 1: TensorBoard keeps the earlier files' values of the steps before it and drops the rest.</summary>
    public void Started(long step)
    {
        if (step == 0) return;
        var start = new Tensorboard.Event
        {
            Step = step + 1,
            WallTime = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0,
            SessionLog = new Tensorboard.SessionLog { Status = Tensorboard.SessionLog.Types.SessionStatus.Start },
        };
        AppendRecord(_file, Google.Protobuf.MessageExtensions.ToByteArray(start));
    }

    /// <summary>One TFRecord: the length (u64), its masked CRC-32C, the data, the data's masked CRC-32C.</summary>
    static void AppendRecord(string path, byte[] data)
    {
        var record = new byte[8 + 4 + data.Length + 4];
        BinaryPrimitives.WriteUInt64LittleEndian(record, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(8), MaskedCrc32C(record.AsSpan(0, 8)));
        data.CopyTo(record, 12);
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(12 + data.Length), MaskedCrc32C(data));
        using var f = new FileStream(path, FileMode.Append, FileAccess.Write);
        f.Write(record);
    }

    static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data) crc = BitOperations.Crc32C(crc, b);
        crc = ~crc;
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8;   // TFRecord's mask: rotate right 15 bits, add a constant
    }

    public void Step(StepMetrics m)
    {
        int step = checked((int)m.Step);
        _writer.add_scalar("train/loss", (float)m.Loss, step);
        _writer.add_scalar("train/ce_loss", (float)m.CeLoss, step);
        _writer.add_scalar("train/aux_loss", (float)m.AuxLoss, step);
        _writer.add_scalar("train/lr", (float)m.Lr, step);
        _writer.add_scalar("train/grad_norm", (float)m.GradNorm, step);
        _writer.add_scalar("train/tokens_per_second", (float)m.TokensPerSecond, step);
        if (m.EvalLoss is double e) _writer.add_scalar("eval/loss", (float)e, step);
        if (_usage is null) return;
        foreach (var (layer, counts) in _usage.TakeCounts())
        {
            using var scope = NewDisposeScope();
            // One value per routed choice: the expert's index, so the histogram's buckets are the experts.
            using var experts = arange(counts.Length, dtype: ScalarType.Float32);
            using var values = experts.repeat_interleave(tensor(counts));
            if (values.numel() > 0) _writer.add_histogram($"experts/layer_{layer:D2}", values, step);
        }
    }

    public void Evaluated(long step, double evalLoss) => _writer.add_scalar("eval/loss", (float)evalLoss, checked((int)step));

    public void Dispose()
    {
        // TorchSharp's writer appends each event to the file as it comes: nothing to flush or close.
        if (_usage is not null) _adapter.SetRoutingObserver(null);
    }

    /// <summary>How often each layer's experts were chosen since the last step, in the training forward passes only
    /// (not evaluation, which runs without gradients, nor a checkpointed layer's first pass, which does too).</summary>
    sealed class ExpertUsage(int[] experts) : IRoutingObserver
    {
        readonly SortedDictionary<int, long[]> _counts = [];

        public void Add(int layer, string module, Tensor topIndices, Tensor topWeights, int numExperts)
        {
            if (!is_grad_enabled()) return;
            using var counts = topIndices.flatten().bincount(null, numExperts).cpu();
            if (!_counts.TryGetValue(layer, out var sum)) _counts[layer] = sum = new long[experts[layer]];
            var data = counts.data<long>();
            for (int e = 0; e < sum.Length && e < data.Count; e++) sum[e] += data[e];
        }

        public List<(int Layer, long[] Counts)> TakeCounts()
        {
            var taken = _counts.Select(kv => (kv.Key, kv.Value)).ToList();
            _counts.Clear();
            return taken;
        }
    }
}
