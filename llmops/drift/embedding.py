"""Embedding drift: unbiased MMD² with an RBF kernel and a permutation test, plus centroid distance.

All permutations are evaluated in one pass over the kernel tiles (see `kernels.numpy_ref`): the
per-permutation statistic follows in closed form from q_p = sum_{i!=j in group p} k_ij and the
kernel row sums r, so 1,000 permutations cost about as much as a few.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmops.drift import kernels
from llmops.drift.inputs import DriftInputError, as_array, clean_embeddings

__all__ = ["MMDResult", "mmd_test", "median_bandwidth", "permutation_labels", "mmd2_from_sums"]

# Rows used for the median heuristic: 2,000 rows give ~2M pairs, plenty for a stable median.
MEDIAN_ROWS = 2000


@dataclass(frozen=True)
class MMDResult:
    """Outcome of `mmd_test`.

    Attributes:
        mmd2: unbiased MMD² between reference and current (can be slightly negative under no drift).
        p_value: permutation p-value, (1 + #{null >= mmd2}) / (1 + permutations).
        bandwidth: the RBF σ used, k(x,y) = exp(-|x-y|² / (2σ²)).
        n_reference, n_current: rows used (after dropping rows with NaN).
        permutations: number of random permutations.
        backend: ``numpy``, ``cupy`` or ``triton``.
        seconds: wall time of the test (bandwidth, permutations and kernel sums).
        centroid_distance: Euclidean distance between the two mean embeddings (Phoenix's metric).
        alpha: significance level; `drift` is p_value < alpha.
        null: the permutation statistics (for plots).
    """

    mmd2: float
    p_value: float
    bandwidth: float
    n_reference: int
    n_current: int
    permutations: int
    backend: str
    seconds: float
    centroid_distance: float
    alpha: float = 0.05
    null: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @property
    def drift(self) -> bool:
        """True when the test rejects "no drift" at level alpha."""
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the null distribution is left out)."""
        out = asdict(self)
        out.pop("null")
        out["drift"] = self.drift
        return out


def median_bandwidth(z, *, seed: int = 0, max_rows: int = MEDIAN_ROWS) -> float:
    """σ of the median heuristic: σ² = median(|z_i - z_j|², i < j) / 2 over the pooled rows.

    Above `max_rows` rows a seeded random subset of rows is used. Works on NumPy and CuPy arrays.

    Raises:
        DriftInputError: all rows are identical, so no bandwidth can be derived.
    """
    xp = _array_module(z)
    if z.shape[0] > max_rows:
        rows = np.random.default_rng(seed).choice(z.shape[0], size=max_rows, replace=False)
        z = z[xp.asarray(np.sort(rows))]
    # Centred float32 Gram (one BLAS call) is accurate to ~1e-6 relative here, plenty for a heuristic.
    z = (z - z.mean(axis=0, dtype=xp.float64)).astype(xp.float32)
    sq = (z * z).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    count = z.shape[0]
    # The off-diagonal entries without an index array: drop the first element, and each row of the
    # (count-1, count+1) view then ends with a diagonal entry. Each pair appears twice, which
    # leaves the median unchanged.
    off_diagonal = d2.ravel()[1:].reshape(count - 1, count + 1)[:, :-1]
    flat = off_diagonal.ravel()
    half = flat.size // 2  # the count, n(n-1), is even: the median averages two middle values
    middle = np.partition(flat, [half - 1, half])[half - 1 : half + 1] if xp is np else xp.sort(flat)[half - 1 : half + 1]
    median = max(float(middle.astype(xp.float64).mean()), 0.0)
    if not median > 0.0:
        raise DriftInputError("the median distance between rows is 0 (mostly identical rows): pass an explicit bandwidth")
    return float(np.sqrt(median / 2.0))


def permutation_labels(n: int, m: int, permutations: int, *, seed: int = 0, xp=np):
    """0/1 label matrix of shape (n + m, 1 + permutations), dtype float32.

    Column 0 marks the observed split (the first n rows are the reference); each further column
    is a uniformly random split of the pooled rows into n and m, drawn with `numpy.random`'s
    Generator seeded by `seed` (the GPU backend draws its own on the device).
    """
    base = np.zeros(n + m, np.float32)
    base[:n] = 1.0
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(base, (permutations, n + m)), axis=1)
    labels = np.concatenate([base[:, None], shuffled.T], axis=1)
    return xp.asarray(labels)


def mmd2_from_sums(q, r, labels, n: int, m: int):
    """Unbiased MMD² of every labelling from the kernel sums (float64 arithmetic).

    With a = labels[:, p] (reference rows), s = aᵀr and T = 1ᵀr:
    sum_XX = q, sum_YY = T - 2s + q, sum_XY = s - q (all without the diagonal), so
    MMD²_u = q/(n(n-1)) + (T - 2s + q)/(m(m-1)) - 2(s - q)/(nm).
    """
    xp = _array_module(q)
    s = labels.T.astype(xp.float64) @ r
    total = r.sum()
    return q / (n * (n - 1)) + (total - 2.0 * s + q) / (m * (m - 1)) - 2.0 * (s - q) / (n * m)


def mmd_test(
    reference,
    current,
    permutations: int = 1000,
    bandwidth: float | str = "median",
    backend: str = "auto",
    seed: int = 0,
    alpha: float = 0.05,
) -> MMDResult:
    """Two-sample test for embedding drift: unbiased MMD² (RBF kernel) with a permutation test.

    Args:
        reference, current: embeddings, shape (rows, d): NumPy, CuPy or torch (read through DLPack
            without a copy where the data already lives on the backend's device). Rows holding NaN or
            infinity are dropped with a `DriftWarning` that counts them.
        permutations: random permutations for the null distribution (>= 1).
        bandwidth: σ of k(x,y) = exp(-|x-y|²/(2σ²)), or "median" (σ² = half the median squared
            distance between pooled rows, on at most 2,000 rows).
        backend: "auto", "numpy"/"cpu", "cupy"/"gpu" or "triton".
        seed: seeds the permutations and the median subsample.
        alpha: significance level for `MMDResult.drift`.

    Returns:
        An `MMDResult`.

    Raises:
        DriftInputError: mismatched dimensions, empty sets, fewer than 2 usable rows, bad bandwidth.
    """
    start = time.perf_counter()
    name = kernels.resolve_backend(backend)
    device = kernels.backend_device(name)
    if name == "cupy" and _exceeds_gpu_memory(reference, current):
        device = "cpu"  # keep the rows in host memory: the GPU kernel streams them tile by tile
    ref = as_array(reference, device=device, name="reference")
    cur = as_array(current, device=device, name="current")
    xp = _array_module(ref)
    ref, cur = clean_embeddings(ref, cur, xp)
    if int(permutations) < 1:
        raise DriftInputError(f"permutations must be at least 1, got {permutations}")
    n, m = int(ref.shape[0]), int(cur.shape[0])
    pooled = xp.concatenate([ref, cur], axis=0)
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise DriftInputError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}")
        sigma = median_bandwidth(pooled, seed=seed)
    else:
        sigma = float(bandwidth)
        if not np.isfinite(sigma) or sigma <= 0:
            raise DriftInputError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}")
    if name == "cupy":
        from llmops.drift.kernels import cupy_kernels

        labels = cupy_kernels.permutation_labels(n, m, int(permutations), seed=seed)
    else:
        labels = permutation_labels(n, m, int(permutations), seed=seed)
    q, r = kernels.rbf_permutation_sums(pooled, labels, sigma, name)
    stats = _to_numpy(mmd2_from_sums(q, r, labels, n, m))
    del labels
    observed, null = float(stats[0]), stats[1:]
    p_value = float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))
    centroid = float(_to_numpy(xp.linalg.norm(ref.mean(axis=0, dtype=xp.float64) - cur.mean(axis=0, dtype=xp.float64))))
    return MMDResult(
        mmd2=observed,
        p_value=p_value,
        bandwidth=sigma,
        n_reference=n,
        n_current=m,
        permutations=int(permutations),
        backend=name,
        seconds=time.perf_counter() - start,
        centroid_distance=centroid,
        alpha=alpha,
        null=null,
    )


def _exceeds_gpu_memory(*arrays) -> bool:
    """True when host (NumPy) inputs would take more than half of the free GPU memory."""
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return False
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    return sum(a.size for a in arrays) * 4 > free // 2


def _array_module(x):
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _to_numpy(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)
