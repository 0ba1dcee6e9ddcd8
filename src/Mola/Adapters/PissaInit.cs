using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// PiSSA experts (the paper's Appendix G): every expert of a module starts from the top-r singular triplets of its
/// frozen W, <c>A = S^(1/2) V^T / sqrt(s)</c> and <c>B = U S^(1/2) / sqrt(s)</c> with s = alpha / r, so that
/// <c>s B A = U_r S_r V_r^T</c>; W is replaced by the residual <c>W - s B A</c>. The router's weights sum to 1 over the
/// chosen experts and all experts are equal, so the adapted model computes W x at step 0, whatever the routing.
/// </summary>
public static class PissaInit
{
    /// <summary>Subspace iterations of the randomized SVD by default: with 10 columns of oversampling, four make the top
    /// triplets of trained weights agree with the exact ones closely (PEFT's documentation suggests pissa_niter_4 too),
    /// and the step-0 model is the base's whatever the SVD's accuracy, since the residual is taken from the factors.</summary>
    public const int DefaultIterations = 4;

    /// <summary>A number of subspace iterations, or <c>full</c> (= 0: the exact SVD); <paramref name="key"/> names the
    /// setting in the error.</summary>
    public static int ParseIterations(string text, string key) =>
        text == "full" ? 0
        : int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int k) ? k
        : throw new MolaException(n => $"{n(key)} must be a number of subspace iterations (0 or more) or full, got \"{text}\"");

    /// <summary>Initialises every MoLA module of <paramref name="adapter"/> and writes the residuals into the base weights.
    /// The top-r triplets come from <see cref="TruncatedSvd"/> with the adapter's <see cref="AdapterConfig.PissaIterations"/>
    /// (0: the exact SVD), from a sketch seeded alike every time, so the same base gives the same factors.
    /// Returns the initial factors per module, under <c>{prefix}.pissa_A.weight</c> [r, in] and
    /// <c>{prefix}.pissa_B.weight</c> [out, r] (float32): with the unchanged base checkpoint they rebuild the residual
    /// exactly (<see cref="ApplyResidual"/>).</summary>
    /// <param name="progress">Called after each matrix with (matrices done, matrices in all).</param>
    public static Dictionary<string, Tensor> Apply(AdapterModel adapter, Action<int, int>? progress = null)
    {
        var factors = new Dictionary<string, Tensor>();
        using var _ = torch.no_grad();
        var generator = new Generator(0);
        int done = 0;
        foreach (var (layer, module, target, adapterLayer) in adapter.Modules)
        {
            if (adapterLayer is not MolaLayer mola)
                throw new MolaException("PiSSA initialisation applies to MoLA adapters (peft_type MOLA)");
            using var scope = NewDisposeScope();
            int r = mola.Rank;
            var (u, s, vh) = TruncatedSvd.Compute(target.weight, r, adapter.Config.PissaIterations, generator);
            var root = (s / mola.Scaling).sqrt();
            var a = (root.unsqueeze(1) * vh).to(ScalarType.Float32);          // [r, in]
            var b = (u * root).to(ScalarType.Float32);                        // [out, r]
            mola.lora_A.copy_(a.repeat(mola.NumExperts, 1));
            mola.lora_B.copy_(b.repeat(1, mola.NumExperts));
            string prefix = AdapterFile.Prefix(layer, module);
            // Kept on the CPU, as a load reads them (they are small: (in + out) r floats a module).
            factors[$"{prefix}.pissa_A.weight"] = a.detach().cpu().clone().MoveToOuterDisposeScope();
            factors[$"{prefix}.pissa_B.weight"] = b.detach().cpu().clone().MoveToOuterDisposeScope();
            Subtract(target.weight, mola.Scaling, a, b);
            progress?.Invoke(++done, adapter.Modules.Count);
        }
        return factors;
    }

    /// <summary>Replaces each adapted base weight W by <c>W - s B A</c> from stored initial factors (a PiSSA adapter
    /// loaded onto the unchanged base checkpoint).</summary>
    public static void ApplyResidual(AdapterModel adapter, IReadOnlyDictionary<string, Tensor> factors, string source)
    {
        using var _ = torch.no_grad();
        // Every module checked before any weight changes: a mismatch leaves the base as it was.
        var residuals = new List<(Tensor Weight, double Scaling, Tensor A, Tensor B)>();
        foreach (var (layer, module, target, adapterLayer) in adapter.Modules)
        {
            string prefix = AdapterFile.Prefix(layer, module);
            if (!factors.TryGetValue($"{prefix}.pissa_A.weight", out var a) || !factors.TryGetValue($"{prefix}.pissa_B.weight", out var b))
                throw new MolaException($"{source}: \"{prefix}.pissa_A.weight\" or \"{prefix}.pissa_B.weight\" missing (a PiSSA adapter stores the initial factors of every module)");
            var scaling = adapterLayer is MolaLayer m ? m.Scaling : throw new MolaException($"{source}: PiSSA factors on a LoRA adapter");
            int rank = m.Rank;
            if (a.shape[1] != target.InFeatures || b.shape[0] != target.OutFeatures || a.shape[0] != rank || b.shape[1] != rank)
                throw new MolaException($"{source}: \"{prefix}.pissa_A.weight\" {SafeTensorsFile.FormatShape(a.shape)} and pissa_B {SafeTensorsFile.FormatShape(b.shape)} " +
                    $"do not fit the weight [{target.OutFeatures}, {target.InFeatures}] at rank {rank} (expected [{rank}, {target.InFeatures}] and [{target.OutFeatures}, {rank}])");
            residuals.Add((target.weight, scaling, a, b));
        }
        var expected = residuals.Count * 2;
        if (factors.Count != expected)
            throw new MolaException($"{source}: {factors.Count} tensors, but the adapter's {residuals.Count} modules need {expected} (pissa_A and pissa_B each)");
        foreach (var (weight, scaling, a, b) in residuals) Subtract(weight, scaling, a, b);
    }

    // In float64 and then rounded once to the weight's dtype: the residual plus s B A gives W back to that rounding.
    // The weight may use a mapped file's pages (a private mapping): writing it never changes the file.
    static void Subtract(Tensor weight, double scaling, Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        var update = b.to(ScalarType.Float64, weight.device).matmul(a.to(ScalarType.Float64, weight.device)) * scaling;
        weight.copy_((weight.to(ScalarType.Float64) - update).to(weight.dtype));
    }
}
