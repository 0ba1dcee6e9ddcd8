using Mola.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Mola.Training;

/// <summary>
/// AdamW with PyTorch's update rule (decoupled weight decay, bias-corrected moments), written out so
/// that its whole state (moments and step) can be checkpointed to safetensors and resumed exactly.
/// </summary>
public sealed class AdamW : IDisposable
{
    readonly Parameter[] _params;
    readonly Tensor[] _m, _v;

    public double LearningRate { get; set; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; }
    /// <summary>Optimizer steps taken.</summary>
    public long Steps { get; private set; }

    public AdamW(IEnumerable<Parameter> parameters, double learningRate)
    {
        _params = parameters.ToArray();
        LearningRate = learningRate;
        _m = _params.Select(p => zeros_like(p).DetachFromDisposeScope()).ToArray();
        _v = _params.Select(p => zeros_like(p).DetachFromDisposeScope()).ToArray();
    }

    public void ZeroGrad()
    {
        foreach (var p in _params) p.grad?.zero_();
    }

    public void Step()
    {
        Steps++;
        double bc1 = 1 - Math.Pow(Beta1, Steps), bc2 = 1 - Math.Pow(Beta2, Steps);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        for (int i = 0; i < _params.Length; i++)
        {
            var p = _params[i];
            var g = p.grad;
            if (g is null) continue;
            if (WeightDecay != 0) p.mul_(1 - LearningRate * WeightDecay);
            _m[i].mul_(Beta1).add_(g, alpha: 1 - Beta1);
            _v[i].mul_(Beta2).addcmul_(g, g, 1 - Beta2);
            var denom = (_v[i].sqrt() / Math.Sqrt(bc2)).add_(Eps);
            p.addcdiv_(_m[i], denom, -LearningRate / bc1);
        }
    }

    /// <summary>Scales gradients so their global L2 norm is at most <paramref name="maxNorm"/> (as
    /// <c>clip_grad_norm_</c>); returns the norm before clipping.</summary>
    public double ClipGradNorm(double maxNorm)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var grads = _params.Where(p => p.grad is not null).Select(p => p.grad!).ToList();
        if (grads.Count == 0) return 0;
        var total = stack(grads.Select(g => g.to(ScalarType.Float32).pow(2).sum()).ToArray()).sum().sqrt().item<float>();
        if (maxNorm > 0 && total > maxNorm)
        {
            double coef = maxNorm / (total + 1e-6);
            foreach (var g in grads) g.mul_(coef);
        }
        return total;
    }

    public void Save(string path)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        for (int i = 0; i < _params.Length; i++)
        {
            tensors.Add(new($"exp_avg.{i:D5}", _m[i]));
            tensors.Add(new($"exp_avg_sq.{i:D5}", _v[i]));
        }
        SafeTensorsFile.Save(path, tensors, new Dictionary<string, string> { ["step"] = Steps.ToString(), ["parameters"] = _params.Length.ToString() });
    }

    public void Load(string path)
    {
        using var f = SafeTensorsFile.Open(path);
        if (!f.Metadata.TryGetValue("parameters", out var n) || n != _params.Length.ToString())
            throw new MolaException($"{path}: optimizer state is for {n ?? "?"} parameters, the adapter has {_params.Length}");
        using var _ = no_grad();
        for (int i = 0; i < _params.Length; i++)
        {
            using var m = f.Read($"exp_avg.{i:D5}", ScalarType.Float32, _params[i].device);
            using var v = f.Read($"exp_avg_sq.{i:D5}", ScalarType.Float32, _params[i].device);
            if (!m.shape.SequenceEqual(_m[i].shape)) throw new MolaException($"{path}: exp_avg.{i:D5} has the wrong shape");
            _m[i].copy_(m);
            _v[i].copy_(v);
        }
        Steps = long.Parse(f.Metadata["step"]);
    }

    public void Dispose()
    {
        foreach (var t in _m) t.Dispose();
        foreach (var t in _v) t.Dispose();
    }
}

/// <summary>Linear warm-up from 0, then linear decay to 0 at the last step (as
/// <c>get_linear_schedule_with_warmup</c>): the factor for optimizer step s (0-based).</summary>
public static class LrSchedule
{
    public static double Factor(long step, long warmupSteps, long totalSteps)
    {
        if (step < warmupSteps) return (double)step / Math.Max(1, warmupSteps);
        return Math.Max(0.0, (double)(totalSteps - step) / Math.Max(1, totalSteps - warmupSteps));
    }
}
