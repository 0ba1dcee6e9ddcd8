using Mola.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>The randomized truncated SVD against matrices built from a known U, S and V (the numbers it must find),
/// not against another SVD routine's output.</summary>
public class TruncatedSvdTests
{
    const int M = 300, N = 200, R = 8;

    /// <summary>U diag(S) V^T with U [M, N] and V [N, N] orthonormal (QR of Gaussian matrices).</summary>
    static (Tensor W, Tensor U, Tensor V) Prescribed(double[] s, long seed)
    {
        var g = new Generator((ulong)seed);
        var u = linalg.qr(randn([M, N], ScalarType.Float64, generator: g)).Q;
        var v = linalg.qr(randn([N, N], ScalarType.Float64, generator: g)).Q;
        var w = (u * tensor(s)).matmul(v.t());
        return (w, u, v);
    }

    /// <summary>sin of the largest principal angle between the column spaces of orthonormal X and Y (same width).</summary>
    static double SinAngle(Tensor x, Tensor y) => linalg.matrix_norm(y - x.matmul(x.t().matmul(y)), 2).item<double>();

    static double[] Values(Tensor s) => s.data<double>().ToArray();

    /// <summary>Top 8 values 100 ... 30, then a tail from 3 down to 0.01: a gap of 10 after r. The subspace error decays as
    /// (sigma_(l+1) / sigma_r)^(2K + 1) = 0.1^9 at K = 4 (up to a constant of order sqrt(n)), the values' as its square:
    /// both land at float64 rounding, so the tolerances are tight (1e-10 relative, angles below 1e-6).</summary>
    [Fact]
    public void WithAGapAfterR_TopTripletsMatchThePrescribedOnes()
    {
        var top = Enumerable.Range(0, R).Select(i => 100.0 - 10 * i).ToArray();
        var tail = Enumerable.Range(0, N - R).Select(i => 3.0 * Math.Pow(0.01 / 3, i / (double)(N - R - 1))).ToArray();
        var (w, u, v) = Prescribed([.. top, .. tail], seed: 11);

        var (uh, sh, vh) = TruncatedSvd.Compute(w, R, iterations: 4, new Generator(0));
        var values = Values(sh);
        for (int i = 0; i < R; i++)
            Assert.True(Math.Abs(values[i] - top[i]) <= 1e-10 * top[i], $"sigma_{i + 1}: {values[i]} against {top[i]}");
        Assert.True(SinAngle(u[.., ..R], uh) <= 1e-6, $"left subspace angle {SinAngle(u[.., ..R], uh)}");
        Assert.True(SinAngle(v[.., ..R], vh.t()) <= 1e-6, $"right subspace angle {SinAngle(v[.., ..R], vh.t())}");
        // U S Vh is W's best rank-r approximation: its distance from W is the tail's norm (Eckart-Young).
        double residual = linalg.matrix_norm(w - (uh * sh).matmul(vh)).item<double>();
        Assert.Equal(Math.Sqrt(tail.Sum(x => x * x)), residual, 9);
    }

    /// <summary>A geometric spectrum 0.9^i: no gap anywhere. The estimates come from Q^T W, whose singular values never
    /// exceed W's (interlacing: exact, up to rounding). From below, Gu (2015, Theorem 4.3) bounds the shortfall of
    /// sigma_j by a factor 1 / sqrt(1 + C^2 (sigma_(l-1) / sigma_j)^(4K + 2)) (C a product of the Gaussian sketch's
    /// norms, about sqrt(n l) = 60 here). At K = 4 the ratio term is at most (0.9^9)^18 = 3.8e-8 for j &lt;= 8, so even a
    /// C of 160 keeps every value within 0.05%: the bound asserted. At K = 1 the same term is 0.387^6 = 3.4e-3 and a
    /// C of 60 would allow several percent: the bound is not one that any K passes.</summary>
    [Fact]
    public void WithoutAGap_TopValuesAreWithinTheStatedBound()
    {
        var s = Enumerable.Range(0, N).Select(i => Math.Pow(0.9, i)).ToArray();
        var (w, _, _) = Prescribed(s, seed: 12);
        var (_, sh, _) = TruncatedSvd.Compute(w, R, iterations: 4, new Generator(0));
        var values = Values(sh);
        for (int i = 0; i < R; i++)
        {
            Assert.True(values[i] <= s[i] * (1 + 1e-12), $"sigma_{i + 1}: {values[i]} above the true {s[i]}");
            Assert.True(values[i] >= s[i] * (1 - 5e-4), $"sigma_{i + 1}: {values[i]} more than 0.05% below the true {s[i]}");
        }
    }

    /// <summary>Iterations 0 is the exact SVD: the prescribed values to rounding with no gap at all (a flat spectrum,
    /// where no sketch could separate the top r).</summary>
    [Fact]
    public void ZeroIterations_IsTheExactSvd()
    {
        var s = Enumerable.Range(0, N).Select(i => 1.0 - i * 1e-3).ToArray();
        var (w, u, _) = Prescribed(s, seed: 13);
        var (uh, sh, _) = TruncatedSvd.Compute(w, R, iterations: 0, new Generator(0));
        var values = Values(sh);
        for (int i = 0; i < R; i++) Assert.Equal(s[i], values[i], 12);
        // Spectrum 1, 0.999, ...: the top 8 directions are distinct, so the subspace is the prescribed one.
        Assert.True(SinAngle(u[.., ..R], uh) <= 1e-8);
    }
}
