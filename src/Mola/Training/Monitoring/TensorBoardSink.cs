using Mola.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Training.Monitoring;

/// <summary>
/// <c>--report-to tensorboard</c>: TensorBoard event files under <c>RUN/tensorboard/</c>, written with TorchSharp's
/// <c>SummaryWriter</c>: the scalars of every metrics.jsonl line (<c>train/loss</c>, <c>train/ce_loss</c>,
/// <c>train/aux_loss</c>, <c>train/lr</c>, <c>train/grad_norm</c>, <c>train/tokens_per_second</c>,
/// <c>eval/loss</c>) and, for a MoLA adapter, each layer's expert usage in the step as a histogram of the chosen
/// experts' indices (<c>experts/layer_NN</c>; every token's top-k choices over the layer's modules).
/// </summary>
public sealed class TensorBoardSink : IMetricsSink
{
    readonly TorchSharp.Modules.SummaryWriter _writer;
    readonly AdapterModel _adapter;
    readonly ExpertUsage? _usage;

    public TensorBoardSink(string runDirectory, AdapterModel adapter)
    {
        Directory = Path.Combine(runDirectory, "tensorboard");
        System.IO.Directory.CreateDirectory(Directory);
        _writer = torch.utils.tensorboard.SummaryWriter(Directory);
        _adapter = adapter;
        if (adapter.Config.Kind == AdapterKind.Mola)
        {
            _usage = new ExpertUsage(adapter.Config.NumExperts);
            adapter.SetRoutingObserver(_usage);
        }
    }

    public string Directory { get; }

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
