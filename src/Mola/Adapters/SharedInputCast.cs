using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// One float32 copy of a layer input for all the adapters that read it: q, k and v get the same normed hidden
/// states, and so do gate and up. Each adapter's products save their float32 input for the backward pass, so one
/// cast per module kept three copies alive per attention block and two per MLP until the backward pass reached them
/// (at the 1.1B shape, 24 KB per token and layer, bench/NOTES.md). The cast is kept for the input it was made from
/// (the same tensor object) until another input comes; autograd holds what the backward pass needs.
/// </summary>
public static class SharedInputCast
{
    [ThreadStatic] static Tensor? t_source;
    [ThreadStatic] static Tensor? t_float;
    [ThreadStatic] static bool t_grad;   // a copy made without autograd must not serve a pass with it, nor the reverse

    /// <summary><paramref name="x"/> as float32 [N, in] rows; the same storage for every call with the same input
    /// tensor, in the caller's dispose scope (an alias: disposing it leaves the shared copy alone).</summary>
    public static Tensor Float32Rows(Tensor x, long inFeatures)
    {
        bool grad = is_grad_enabled();
        if (!ReferenceEquals(x, t_source) || grad != t_grad || t_float is null || t_float.IsInvalid || x.IsInvalid)
        {
            Release();
            using var rows = x.reshape(-1, inFeatures);
            t_float = rows.to(ScalarType.Float32).DetachFromDisposeScope();
            t_source = x;
            t_grad = grad;
        }
        return t_float.alias();
    }

    /// <summary>Drops the kept copy (what autograd saved of it stays until its backward pass).</summary>
    public static void Release()
    {
        t_float?.Dispose();
        t_float = null;
        t_source = null;
    }
}
