using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// The MoLA layers of one decoder layer that read the same input: q, k and v (the normed hidden states), and gate
/// and up. In training they route as one: one product of the input with all their routers and A matrices stacked,
/// then one top-k, one softmax, one gate scatter and one gating multiply over [N, members, E] (a layer's modules
/// share E, k and r), instead of one of each per module; each member then adds its own <c>h B^T</c>. The small
/// operations, which do not get faster on a second thread as the frozen products do, run once for the group, and
/// the A-side products are wider (bench/NOTES.md, session 8). With dropout on, the routers' products are one and
/// each member's experts read its own dropout(x). The same arithmetic as each member alone (tested).
/// The first member called with an input computes every member's gated ranks; the others take theirs for that
/// same input (the same tensor object, as <see cref="SharedInputCast"/> keys its copy). Every member is expected to run
/// on that input, as a decoder layer runs them: the first call hands all the members' logits to their sinks.
/// </summary>
public sealed class MolaSiblings
{
    readonly MolaLayer[] _members;
    Tensor? _input;                  // the input the pieces below were computed for
    bool _grad;
    int _thread;
    Tensor?[] _pieces;               // each member's gated ranks [N, E*r], until it takes them

    public MolaSiblings(IReadOnlyList<MolaLayer> members)
    {
        if (members.Count < 2) throw new ArgumentException("a group needs two members or more", nameof(members));
        _members = [.. members];
        _pieces = new Tensor?[_members.Length];
    }

    public IReadOnlyList<MolaLayer> Members => _members;

    /// <summary>Whether the members can route as one now: the same experts, top-k, rank, scaling, precision and dropout,
    /// no loop port, no routing observer (<see cref="MolaLayer"/> checks the rest).</summary>
    internal bool Applies()
    {
        var first = _members[0];
        foreach (var m in _members)
        {
            if (m.NumExperts != first.NumExperts || m.TopK != first.TopK || m.Rank != first.Rank || m.Scaling != first.Scaling
                || m.Precision != first.Precision || m.InFeatures != first.InFeatures || m.DropoutP != first.DropoutP
                || m.training != first.training) return false;
            if (m.UseLoopPath || m.Observer is not null) return false;
        }
        return true;
    }

    /// <summary><paramref name="member"/>'s gated ranks [N, E*r] in <paramref name="xa"/>'s dtype for input
    /// <paramref name="x"/> (in the caller's dispose scope); computes every member's on the first call for an input.</summary>
    internal Tensor Gated(MolaLayer member, Tensor x, Tensor xa, bool dropout, bool scaleInGate)
    {
        int index = Array.IndexOf(_members, member);
        bool grad = is_grad_enabled();
        if (!ReferenceEquals(x, _input) || grad != _grad || _thread != Environment.CurrentManagedThreadId || _pieces[index] is null)
        {
            Release();
            ComputeAll(xa, dropout, scaleInGate);
            _input = x;
            _grad = grad;
            _thread = Environment.CurrentManagedThreadId;
        }
        var mine = _pieces[index]!.alias();
        _pieces[index]!.Dispose();
        _pieces[index] = null;
        return mine;
    }

    /// <summary>Drops the pieces no member has taken (what autograd saved of them stays).</summary>
    public void Release()
    {
        for (int i = 0; i < _pieces.Length; i++)
        {
            _pieces[i]?.Dispose();
            _pieces[i] = null;
        }
        _input = null;
    }

    void ComputeAll(Tensor xa, bool dropout, bool scaleInGate)
    {
        using var scope = NewDisposeScope();
        var first = _members[0];
        int S = _members.Length, E = first.NumExperts, k = first.TopK, r = first.Rank;
        long N = xa.shape[0], ranks = (long)E * r;
        var type = xa.dtype;
        var routers = _members.Select(m => (Tensor)m.router);
        Tensor[] parts;
        if (!dropout)
        {
            // Routers first, then the A matrices: the logits [N, S*E] and the ranks [N, S*E*r] are each one block.
            var weights = cat([.. routers, .. _members.Select(m => (Tensor)m.lora_A)], 0).In(type);
            parts = xa.mm(weights.t()).split([S * E, S * ranks], 1);
        }
        else
        {
            // The routers read x, each member's experts its own dropout(x): the masks drawn in the members' order,
            // as they are when each member routes alone.
            parts = [xa.mm(cat([.. routers], 0).In(type).t()), cat([.. _members.Select(m => m.Dropout(xa).mm(m.lora_A.In(type).t()))], 1)];
        }
        var logits = MolaLayer.Float32Logits(parts[0]).view(N, S, E);
        var (gate, _) = MolaLayer.TopKGate(logits, k, scaleInGate ? first.Scaling : 1);
        var gated = (parts[1].view(N, S, E, r) * gate.unsqueeze(-1)).view(N, S, ranks).In(type);
        // unbind: one backward node (a stack) for all members, where a select per member would each fill zeros.
        var memberLogits = logits.unbind(1);
        var memberGated = gated.unbind(1);
        for (int s = 0; s < S; s++)
        {
            _members[s].RouterLogitsSink?.Invoke(_members[s], memberLogits[s]);
            _pieces[s] = memberGated[s].DetachFromDisposeScope();
        }
    }
}
