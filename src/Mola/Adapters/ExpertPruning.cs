using System.Globalization;
using Mola.Analysis;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>One pruning step: in <see cref="Layer"/>, experts <see cref="Kept"/> and <see cref="Removed"/> (indices of the
/// original adapter) were the closest pair; <see cref="Merged"/>: the two became one, else the less used was dropped.</summary>
public sealed record PruneStep(int Layer, int Kept, int Removed, double Distance, bool Merged);

public sealed record PruneResult(int[] ExpertsBefore, int[] ExpertsAfter, int[] TopKAfter, IReadOnlyList<PruneStep> Steps);

/// <summary>
/// Removes experts where they are most redundant (the paper's section 6.2: lower layers first). A layer's distance
/// between experts i and j is the mean over its modules of ||B_i A_i - B_j A_j||_F (the redundancy of
/// <c>mola analyze</c>); each step takes the closest pair of all layers (the lower layer on a tie) and either drops the
/// one the router selected less often (with routing statistics: it then changes the output only where it had a gate)
/// or merges the two into one expert: the best rank-r approximation of the mean of their updates
/// <c>(B_i A_i + B_j A_j) / 2</c> (from the 2r x 2r core of the stacked factors, never an [out, in] product), with the
/// mean of their router rows. Top-k is lowered where it would pass the experts left.
/// </summary>
public static class ExpertPruning
{
    /// <param name="keepExperts">Prune until this many experts are left in all.</param>
    /// <param name="maxRedundancy">Prune while the closest pair is at most this far apart.</param>
    /// <param name="selections">Per layer and original expert, how often the router chose it (summed over modules);
    /// null: merge pairs instead of dropping one.</param>
    /// <param name="topK">The top-k of an adapter saved by the original MoLA code, which records none.</param>
    public static PruneResult Prune(string adapterDir, string outputDir, int? keepExperts, double? maxRedundancy, long[][]? selections = null, string? topK = null)
    {
        // Read through mola's layout: a PEFT or original-MoLA directory is converted first (a temporary copy).
        using var own = AdapterFile.OwnLayout.Of(adapterDir, topK);
        return PruneOwn(own.Directory, outputDir, keepExperts, maxRedundancy, selections);
    }

    static PruneResult PruneOwn(string adapterDir, string outputDir, int? keepExperts, double? maxRedundancy, long[][]? selections)
    {
        if ((keepExperts is null) == (maxRedundancy is null))
            throw new MolaException(n => $"give one of {n("keep_experts")} T or {n("max_redundancy")} X");
        var config = AdapterConfig.Load(adapterDir);
        string configPath = Path.Combine(adapterDir, "adapter_config.json");
        if (config.Kind != AdapterKind.Mola)
            throw new MolaException($"{configPath}: peft_type is \"LORA\": a plain LoRA adapter has no experts to prune");
        // A PiSSA adapter's residual depends only on its initial factors, not on the experts: they go over unchanged.
        var pissa = config.Pissa ? AdapterFile.LoadPissa(adapterDir) : null;
        int layers = config.NumLayers;
        if (keepExperts is int keep && (keep < layers || keep > config.NumExperts.Sum()))
            throw new MolaException(n => $"{n("keep_experts")} {keep}: the adapter has {config.NumExperts.Sum()} experts over {layers} layers (keep between {layers}, one a layer, and {config.NumExperts.Sum()})");
        if (maxRedundancy is double x && !(x >= 0 && double.IsFinite(x)))
            throw new MolaException(n => $"{n("max_redundancy")} must be a finite distance of 0 or more, got {x.ToString(CultureInfo.InvariantCulture)}");
        if (selections is not null)
            for (int l = 0; l < layers; l++)
                if (l >= selections.Length || selections[l].Length != config.NumExperts[l])
                    throw new MolaException($"the routing statistics do not fit {configPath}: layer {l} has {config.NumExperts[l]} experts");

        string weightsPath = Path.Combine(adapterDir, AdapterFile.WeightsFile);
        using var scope = NewDisposeScope();
        using var file = SafeTensorsFile.Open(weightsPath);
        // experts[l][m]: the live experts of layer l, module m, as (original index, A, B, router row)
        var live = new List<Expert>[layers];
        for (int l = 0; l < layers; l++)
        {
            live[l] = [];
            for (int e = 0; e < config.NumExperts[l]; e++)
                live[l].Add(new Expert(e, config.TargetModules.Select(m => Read(file, weightsPath, l, m, e)).ToArray(), selections?[l][e] ?? 0));
        }

        var steps = new List<PruneStep>();
        while (true)
        {
            if (keepExperts is int k && live.Sum(x => x.Count) <= k) break;
            var best = ClosestPair(live);
            if (best is null) break;
            var (layer, i, j, d) = best.Value;
            if (maxRedundancy is double limit && d > limit) break;
            var (a, b) = (live[layer][i], live[layer][j]);
            if (selections is not null)
            {
                // Drop the less used; on a tie the later one (the pair is ordered i < j).
                var drop = b.Selections <= a.Selections ? b : a;
                live[layer].Remove(drop);
                steps.Add(new PruneStep(layer, drop == b ? a.Original : b.Original, drop.Original, d, Merged: false));
            }
            else
            {
                live[layer][i] = Merge(a, b, config.Rank[layer]);
                live[layer].RemoveAt(j);
                steps.Add(new PruneStep(layer, a.Original, b.Original, d, Merged: true));
            }
        }

        var experts = live.Select(x => x.Count).ToArray();
        var topK = config.TopK.Select((t, l) => Math.Min(t, experts[l])).ToArray();
        var tensors = new List<(string Name, Tensor Tensor)>();
        for (int l = 0; l < layers; l++)
            for (int mi = 0; mi < config.TargetModules.Length; mi++)
            {
                string prefix = AdapterFile.Prefix(l, config.TargetModules[mi]);
                for (int e = 0; e < experts[l]; e++)
                {
                    tensors.Add((AdapterFile.LoraA(prefix, e), live[l][e].Modules[mi].A.to(ScalarType.Float32).contiguous()));
                    tensors.Add((AdapterFile.LoraB(prefix, e), live[l][e].Modules[mi].B.to(ScalarType.Float32).contiguous()));
                }
                tensors.Add((AdapterFile.Router(prefix), torch.stack(live[l].Select(x => x.Modules[mi].Router).ToList()).to(ScalarType.Float32).contiguous()));
            }
        AdapterFile.Save(outputDir, config with { NumExperts = experts, TopK = topK }, tensors);
        if (pissa is not null) AdapterFile.SavePissa(outputDir, pissa);
        return new PruneResult(config.NumExperts, experts, topK, steps);
    }

    sealed record ModuleExpert(Tensor A, Tensor B, Tensor Router);

    sealed record Expert(int Original, ModuleExpert[] Modules, long Selections);

    static ModuleExpert Read(SafeTensorsFile file, string path, int layer, string module, int e)
    {
        string prefix = AdapterFile.Prefix(layer, module);
        Tensor Get(string name)
        {
            var t = file.Read(name, ScalarType.Float64);
            SafeTensorsFile.RequireFinite(t, path, name);
            return t;
        }
        var router = Get($"{prefix}.router.weight");
        if (router.dim() != 2 || e >= router.shape[0])
            throw new MolaException($"{path}: \"{prefix}.router.weight\" has shape {SafeTensorsFile.FormatShape(router.shape)}, fewer rows than the config's experts");
        return new ModuleExpert(Get($"{prefix}.lora_A.{e}.weight"), Get($"{prefix}.lora_B.{e}.weight"), router[e]);
    }

    /// <summary>The closest pair of experts of any layer, by the mean over modules of their distance; the lowest layer on a tie.</summary>
    static (int Layer, int I, int J, double Distance)? ClosestPair(List<Expert>[] live)
    {
        (int, int, int, double)? best = null;
        for (int l = 0; l < live.Length; l++)
        {
            int n = live[l].Count;
            if (n < 2) continue;
            int modules = live[l][0].Modules.Length;
            var sum = new double[n, n];
            for (int m = 0; m < modules; m++)
            {
                var d = Redundancy.PairwiseDistances(live[l].Select(x => x.Modules[m].A).ToList(), live[l].Select(x => x.Modules[m].B).ToList());
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < n; j++) sum[i, j] += d[i, j] / modules;
            }
            for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++)
                    if (best is null || sum[i, j] < best.Value.Item4) best = (l, i, j, sum[i, j]);
        }
        return best;
    }

    /// <summary>Two experts as one: per module the best rank-r approximation (Eckart-Young) of
    /// (B_a A_a + B_b A_b) / 2 = 1/2 [B_a B_b] [A_a; A_b], through QR of both stacked factors and an SVD of the small core.</summary>
    static Expert Merge(Expert a, Expert b, int rank) => new(a.Original, a.Modules.Zip(b.Modules, (x, y) =>
    {
        var (qb, rb) = torch.linalg.qr(torch.cat([x.B, y.B], 1));               // [out, k], [k, 2r]
        var (qa, ra) = torch.linalg.qr(torch.cat([x.A, y.A], 0).t());           // [in, k'], [k', 2r]
        var core = 0.5 * rb.matmul(ra.t());                                     // [k, k']
        var (u, s, vh) = torch.linalg.svd(core, fullMatrices: false);
        long r = Math.Min(rank, s.shape[0]);
        var root = s[..(int)r].sqrt();
        var bNew = qb.matmul(u[.., ..(int)r]) * root;                            // [out, r]
        var aNew = root.unsqueeze(1) * vh[..(int)r].matmul(qa.t());              // [r, in]
        if (r < rank)
        {
            // Fewer than r directions exist (a tiny module): pad with zero rank-1 terms so every expert keeps rank r.
            bNew = torch.cat([bNew, torch.zeros(bNew.shape[0], rank - r, dtype: bNew.dtype)], 1);
            aNew = torch.cat([aNew, torch.zeros(rank - r, aNew.shape[1], dtype: aNew.dtype)], 0);
        }
        return new ModuleExpert(aNew, bNew, (x.Router + y.Router) / 2);
    }).ToArray(), a.Selections + b.Selections);

    /// <summary>Reads routing.csv of <c>mola analyze</c> (layer,module,expert,selections,...) into selections per layer
    /// and expert, summed over modules.</summary>
    public static long[][] ReadSelections(string path, int[] experts)
    {
        var lines = System.Text.Encoding.UTF8.GetString(InputFile.ReadAllBytes(path)).Split('\n').Select(l => l.TrimEnd('\r')).ToArray();
        if (lines.Length == 0 || !lines[0].StartsWith("layer,module,expert,selections", StringComparison.Ordinal))
            throw new MolaException($"{path}:1: expected the header of mola analyze's routing.csv (layer,module,expert,selections,...)");
        var counts = experts.Select(e => new long[e]).ToArray();
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            var f = lines[i].Split(',');
            if (f.Length < 4 || !int.TryParse(f[0], CultureInfo.InvariantCulture, out int l) || !int.TryParse(f[2], CultureInfo.InvariantCulture, out int e)
                || !long.TryParse(f[3], CultureInfo.InvariantCulture, out long n) || n < 0)
                throw new MolaException($"{path}:{i + 1}: expected layer,module,expert,selections with integer layer, expert and selections");
            if (l < 0 || l >= experts.Length || e < 0 || e >= experts[l])
                throw new MolaException($"{path}:{i + 1}: layer {l} expert {e} is not in the adapter ({experts.Length} layers, experts {string.Join(",", experts)})");
            counts[l][e] += n;
        }
        return counts;
    }
}
