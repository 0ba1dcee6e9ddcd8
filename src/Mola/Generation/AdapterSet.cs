using Mola.Adapters;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Generation;

/// <summary>
/// Several adapters on one shared base model, applied unmerged and chosen per batch row. Each adapter is loaded as
/// its own <see cref="AdapterModel"/> (its layers detached from the base right after loading), and every targeted
/// linear map gets one <see cref="RowSwitch"/> that groups the batch rows by their adapter and runs each group
/// through that adapter's layer (or the frozen map for rows on the base model). Merging is out: a merged LoRA would
/// change the base for every row, and MoLA routes per token anyway.
/// </summary>
public sealed class AdapterSet : IDisposable
{
    readonly List<AdapterModel> _adapters = new();
    readonly List<(Linear Target, RowSwitch Switch)> _switches = new();
    readonly RowAssignment _rows = new();

    /// <summary>The adapters' names, in the order of their indices (-1 is the base model alone).</summary>
    public IReadOnlyList<string> Names { get; }

    /// <param name="topK">The top-k of the adapters saved by the original MoLA code, which record none (the others keep theirs).</param>
    public AdapterSet(CausalLM model, IReadOnlyList<(string Name, string Directory)> adapters, string? topK = null)
    {
        Names = adapters.Select(a => a.Name).ToList();
        var perTarget = new Dictionary<Linear, ILinearAdapter?[]>(ReferenceEqualityComparer.Instance);
        try
        {
            for (int i = 0; i < adapters.Count; i++)
            {
                // A PiSSA adapter replaces the base weights by residuals, which the base model's rows and the other adapters share here.
                if (AdapterConfig.Load(adapters[i].Directory, topK, topKWhereMissing: true).Pissa)
                    throw new MolaException($"{adapters[i].Directory}: a PiSSA adapter (init pissa) changes the base weights, which serve shares between " +
                        "the base model and every adapter; use it with generate, eval or perplexity");
                var adapter = AdapterModel.Load(model, adapters[i].Directory, topK, topKWhereMissing: true);
                adapter.eval();   // dropout off
                _adapters.Add(adapter);
                foreach (var (_, _, target, module) in adapter.Modules)
                {
                    if (!perTarget.TryGetValue(target, out var slots)) perTarget[target] = slots = new ILinearAdapter?[adapters.Count];
                    slots[i] = (ILinearAdapter)module;
                    target.Adapter = null;   // the next adapter attaches to the bare base; the switch goes on last
                }
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        foreach (var (target, slots) in perTarget)
        {
            var sw = new RowSwitch(slots, _rows);
            target.Adapter = sw;
            _switches.Add((target, sw));
        }
    }

    /// <summary>Sets the adapter of each batch row for the forward passes that follow (-1: the base model).</summary>
    public void Assign(IReadOnlyList<int> rowAdapters) => _rows.Set(rowAdapters);

    public void Dispose()
    {
        foreach (var (target, _) in _switches) target.Adapter = null;
        _switches.Clear();
        foreach (var a in _adapters) a.Dispose();
        _adapters.Clear();
        _rows.Set([]);
    }

    /// <summary>The rows of the batch grouped by adapter: index tensors built once per assignment, not per layer.</summary>
    sealed class RowAssignment
    {
        public List<(int Adapter, Tensor? Rows)> Groups { get; private set; } = new();

        public void Set(IReadOnlyList<int> rowAdapters)
        {
            foreach (var (_, rows) in Groups) rows?.Dispose();
            var groups = rowAdapters.Select((a, row) => (a, row)).GroupBy(p => p.a).ToList();
            // One group: the whole batch takes one path, no gather or scatter needed.
            Groups = groups.Count == 1
                ? [(groups[0].Key, null)]
                : groups.Select(g => (g.Key, (Tensor?)tensor(g.Select(p => (long)p.row).ToArray()).DetachFromDisposeScope())).ToList();
        }
    }

    sealed class RowSwitch(ILinearAdapter?[] adapters, RowAssignment rows) : ILinearAdapter
    {
        public Tensor Forward(Tensor x, Linear baseLayer)
        {
            var groups = rows.Groups;
            if (groups.Count == 1) return Run(groups[0].Adapter, x, baseLayer);
            using var scope = NewDisposeScope();
            var shape = x.shape.SkipLast(1).Append(baseLayer.OutFeatures).ToArray();
            var y = empty(shape, baseLayer.weight.dtype, x.device);
            foreach (var (adapter, index) in groups)
            {
                var idx = index!.to(x.device);
                y.index_copy_(0, idx, Run(adapter, x.index_select(0, idx), baseLayer));
            }
            return y.MoveToOuterDisposeScope();
        }

        Tensor Run(int adapter, Tensor x, Linear baseLayer) =>
            adapter >= 0 && adapters[adapter] is { } a ? a.Forward(x, baseLayer) : baseLayer.Base(x);
    }
}
