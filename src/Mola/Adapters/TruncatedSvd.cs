using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>
/// The top-r singular triplets of a matrix, in float64: exactly (LAPACK's thin SVD, all min(m, n) triplets) or by a
/// randomized range finder with subspace iterations (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.1; PEFT's
/// <c>pissa_niter_K</c> does the same through <c>torch.svd_lowrank</c>). The randomized route costs about
/// (2K + 2) m n l multiply-adds for l = r + <see cref="Oversampling"/> columns, against the full SVD's
/// O(m n min(m, n)): a 1.1B-shape MLP matrix [5632, 2048] at r 8 and K 4 takes about 2 G multiply-adds, its full SVD (with vectors) some 300 G.
/// </summary>
public static class TruncatedSvd
{
    /// <summary>Extra sketch columns beyond r: Halko et al.'s p = 10, which makes the range finder's error close to
    /// the optimal sigma_(r+1) with high probability.</summary>
    public const int Oversampling = 10;

    /// <summary>U [m, r], S [r] (descending) and Vh [r, n] of <paramref name="w"/> [m, n], in float64.
    /// <paramref name="iterations"/> 0: the exact SVD; K &gt; 0: K subspace iterations, each multiplying by W^T W, which
    /// raises the ratio sigma_(l+1) / sigma_r that the error decays with to the power 2K + 1. When the sketch would be as
    /// wide as the matrix (r + p &gt;= min(m, n)) the exact SVD is both exact and as cheap, so it is taken.</summary>
    public static (Tensor U, Tensor S, Tensor Vh) Compute(Tensor w, int rank, int iterations, Generator generator)
    {
        long m = w.shape[0], n = w.shape[1];
        if (rank < 1 || rank > Math.Min(m, n)) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} for a [{m}, {n}] matrix");
        if (iterations < 0) throw new ArgumentOutOfRangeException(nameof(iterations), "iterations must be 0 (exact) or more");
        using var scope = NewDisposeScope();
        var a = w.to(ScalarType.Float64);
        long l = rank + Oversampling;
        Tensor u, s, vh;
        if (iterations == 0 || l >= Math.Min(m, n))
            (u, s, vh) = torch.linalg.svd(a, fullMatrices: false);
        else
        {
            // Range finder: Q spans W's dominant column space. Re-orthonormalised after every product, since powers of
            // W^T W computed directly lose the smaller of the top-l directions to rounding (Halko et al. section 4.5).
            var q = Orthonormal(a.matmul(torch.randn([n, l], ScalarType.Float64, generator: generator).to(a.device)));
            for (int i = 0; i < iterations; i++)
                q = Orthonormal(a.matmul(Orthonormal(a.t().matmul(q))));
            // W ~ Q Q^T W: the SVD of the small [l, n] matrix Q^T W gives W's top triplets.
            var (ub, sb, vhb) = torch.linalg.svd(q.t().matmul(a), fullMatrices: false);
            (u, s, vh) = (q.matmul(ub), sb, vhb);
        }
        return (u[.., ..rank].contiguous().MoveToOuterDisposeScope(), s[..rank].contiguous().MoveToOuterDisposeScope(),
            vh[..rank].contiguous().MoveToOuterDisposeScope());
    }

    static Tensor Orthonormal(Tensor y) => torch.linalg.qr(y, torch.linalg.QRMode.Reduced).Q;
}
