"""NumPy kernels: the CPU backend and the test oracle ("twin") of every GPU kernel.

The central routine, `rbf_permutation_sums`, returns for a pooled sample Z (N rows) and a 0/1
label matrix A (N x P, one column per permutation):

    q[p] = sum_{i != j} A[i,p] A[j,p] k(z_i, z_j)      (within-group kernel sum, diagonal excluded)
    r[i] = sum_{j != i} k(z_i, z_j)                     (kernel row sums, diagonal excluded)

from which every permutation's unbiased MMD² follows in closed form (see `embedding.py`).
The N x N kernel matrix is never stored: it is computed in square tiles, using its symmetry
(only tiles I <= J), and each tile is multiplied at once by the whole label matrix, so P
permutations cost one GEMM per tile instead of P gathers.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["rbf_permutation_sums", "rbf_matmul", "token_histogram", "FAST_PATH_MAX_EXPONENT"]

# Above this half squared norm (in bandwidth units) exp(<x,y>/σ²) could overflow float32, so the
# factored kernel is not safe and the tile falls back to explicit distances.
FAST_PATH_MAX_EXPONENT = 30.0


def _tile_size(n_rows: int) -> int:
    # 1024-row tiles keep a float32 tile at 4 MiB (cache and memory friendly) while each GEMM
    # is large enough for BLAS to run near peak.
    return int(min(1024, max(n_rows, 1)))


def rbf_permutation_sums(
    z: np.ndarray,
    labels: np.ndarray,
    bandwidth: float,
    *,
    tile: int | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel sums for all permutations at once, with k(x,y) = exp(-|x-y|² / (2 bandwidth²)).

    Args:
        z: pooled sample, shape (N, d); cast to float32.
        labels: 0/1 group labels, shape (N, P); column p marks the rows of group 1 in permutation p.
        bandwidth: the RBF σ (> 0).
        tile: rows per tile (default 1024); any value works, results do not depend on it beyond rounding.
        threads: worker threads over tiles (default: the CPU count, at most 8).

    Returns:
        (q, r): float64 arrays of shape (P,) and (N,), as defined in the module docstring.
    """
    z = np.asarray(z, dtype=np.float32)
    n_rows = z.shape[0]
    # Distances do not change under translation; centring keeps the norms, and so the
    # exponents of the factored kernel below, small.
    z = z - z.mean(axis=0, dtype=np.float64).astype(np.float32)
    z = z * np.float32(1.0 / bandwidth)
    half_sq_norm = 0.5 * np.einsum("ij,ij->i", z, z, dtype=np.float64)
    fast = bool(half_sq_norm.max(initial=0.0) <= FAST_PATH_MAX_EXPONENT)

    labels32 = np.asarray(labels, dtype=np.float32)
    # Last column of ones: the same GEMM then yields the kernel row sums r.
    weights = np.concatenate([labels32, np.ones((n_rows, 1), np.float32)], axis=1)
    if fast:
        # k(x,y) = u(x) u(y) exp(<x,y>) with u = exp(-|x|²/2) (x in bandwidth units): each tile is
        # one GEMM plus one exp, no distance matrix; u is folded into the weights once.
        u = np.exp(-half_sq_norm).astype(np.float32)
        weights *= u[:, None]
    else:
        u = None
    sq_norm32 = (2.0 * half_sq_norm).astype(np.float32)

    tile = tile or _tile_size(n_rows)
    starts = list(range(0, n_rows, tile))
    pairs = [(i, j) for a, i in enumerate(starts) for j in starts[a:]]
    n_perm = labels32.shape[1]

    def run(pair: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        i0, j0 = pair
        i1, j1 = min(i0 + tile, n_rows), min(j0 + tile, n_rows)
        k = z[i0:i1] @ z[j0:j1].T
        if fast:
            np.exp(k, out=k)
        else:
            k *= 2.0
            k -= sq_norm32[i0:i1, None]
            k -= sq_norm32[None, j0:j1]
            np.minimum(k, 0.0, out=k)  # rounding can make a squared distance negative
            k *= 0.5
            np.exp(k, out=k)
        if i0 == j0:
            np.fill_diagonal(k, 0.0)  # the unbiased estimator excludes i == j exactly
        c = k @ weights[j0:j1]
        w_i = weights[i0:i1, :n_perm]
        scale = 1.0 if i0 == j0 else 2.0  # an off-diagonal tile stands for itself and its transpose
        q_part = scale * np.einsum("ip,ip->p", c[:, :n_perm], w_i, dtype=np.float64)
        r_part = np.zeros(n_rows, np.float64)
        r_part[i0:i1] += c[:, n_perm]
        if i0 != j0:
            r_part[j0:j1] += weights[i0:i1, n_perm] @ k  # column sums stand for the transpose tile
        return q_part, r_part

    q = np.zeros(n_perm, np.float64)
    r = np.zeros(n_rows, np.float64)
    workers = threads or min(os.cpu_count() or 1, 8)
    if workers > 1 and len(pairs) > 1:
        # NumPy's exp is single-threaded; tiles in parallel threads (NumPy releases the GIL in
        # BLAS and ufuncs) keep every core busy during it. BLAS is held to one thread meanwhile:
        # threads x BLAS threads oversubscribe the cores (measured 3-9x slower on 2 cores).
        with _single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
            for q_part, r_part in pool.map(run, pairs):
                q += q_part
                r += r_part
    else:
        for pair in pairs:
            q_part, r_part = run(pair)
            q += q_part
            r += r_part
    if fast:
        r *= u  # r was accumulated as sum_j exp(<z_i,z_j>) u_j; restore the factor u_i
    return q, r


def _single_threaded_blas():
    """Context manager limiting BLAS to one thread when threadpoolctl is installed, else a no-op."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def rbf_matmul(x: np.ndarray, y: np.ndarray, v: np.ndarray, bandwidth: float) -> np.ndarray:
    """Reference for the fused GPU tile kernel: exp(-|x_i - y_j|² / (2σ²)) @ v, in float64.

    Args:
        x: (n, d) rows; y: (m, d) rows; v: (m, p) right-hand side; bandwidth: σ.

    Returns:
        (n, p) float64 array.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.exp(-np.maximum(d2, 0.0) / (2.0 * bandwidth**2)) @ np.asarray(v, np.float64)


def token_histogram(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Counts of each token id in [0, vocab_size) as int64; the twin of the GPU histogram kernel."""
    return np.bincount(np.asarray(ids).ravel(), minlength=vocab_size).astype(np.int64)
