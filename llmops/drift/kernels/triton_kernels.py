"""Triton kernel: fused distance -> exp -> product, out = K(x, y) @ w, K never leaves registers.

Each program owns a BM-row tile of x and a BP-column slice of w and walks over y in BN-row tiles:
Gram tile by `tl.dot`, squared distance, exp2, then `tl.dot` with the matching rows of w. This pays
when the right-hand side is narrow (P + 1 <= BP permutations: the Gram is computed once per tile);
for many permutations the CuPy backend's tile GEMMs share one Gram across all of them.
Row offsets are int64: `rows * stride` passes 2^31 elements on large inputs (and on row-strided
views of large buffers), where int32 would wrap. Each y tile's product is added into a float64
accumulator, so the permutation sums do not lose digits as m grows.
Runs on CUDA, or on CPU tensors under TRITON_INTERPRET=1 (slowly: small CI checks only).
Its NumPy twin is `numpy_ref.rbf_matmul`.
"""

from __future__ import annotations

import math

import numpy as np

from llmops.extras import require

triton = require("triton", "the Triton drift kernels")
tl = triton.language

__all__ = ["rbf_matmul", "rbf_permutation_sums"]


@triton.jit
def _rbf_matmul_kernel(
    x_ptr, y_ptr, w_ptr, out_ptr, xx_ptr, yy_ptr,
    n, m, p, d, scale,
    stride_x, stride_y, stride_w, stride_o,
    EXCLUDE_DIAG: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_p = tl.program_id(1)
    # int64 before any multiply by a stride: Triton passes strides and sizes below 2^31 as int32
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    cols_p = pid_p * BP + tl.arange(0, BP)
    row_mask = rows < n
    p_mask = cols_p < p
    xx = tl.load(xx_ptr + rows, mask=row_mask, other=0.0)
    acc = tl.zeros((BM, BP), dtype=tl.float64)
    for j0 in range(0, m, BN):
        cols = tl.arange(0, BN).to(tl.int64) + j0
        col_mask = cols < m
        gram = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, d, BK):
            ks = k0 + tl.arange(0, BK)
            k_mask = ks < d
            x_tile = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            y_tile = tl.load(y_ptr + cols[:, None] * stride_y + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
            gram += tl.dot(x_tile, tl.trans(y_tile))
        yy = tl.load(yy_ptr + cols, mask=col_mask, other=0.0)
        d2 = tl.maximum(xx[:, None] + yy[None, :] - 2.0 * gram, 0.0)
        kernel = tl.exp2(-d2 * scale)  # scale = log2(e) / (2σ²): exp2 is the native instruction
        keep = row_mask[:, None] & col_mask[None, :]
        if EXCLUDE_DIAG:
            keep = keep & (rows[:, None] != cols[None, :])
        kernel = tl.where(keep, kernel, 0.0)
        w_tile = tl.load(w_ptr + cols[:, None] * stride_w + cols_p[None, :], mask=col_mask[:, None] & p_mask[None, :], other=0.0)
        acc += tl.dot(kernel, w_tile).to(tl.float64)
    tl.store(out_ptr + rows[:, None] * stride_o + cols_p[None, :], acc, mask=row_mask[:, None] & p_mask[None, :])


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _rows_on(device: str, a):
    """float32 tensor on `device`; row-strided views stay views (the kernel takes a row stride)."""
    import torch

    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).to(device, torch.float32)
    return t if t.stride(-1) == 1 else t.contiguous()


def rbf_matmul(x, y, w, bandwidth: float, *, exclude_diagonal: bool = False, block: int | None = None):
    """exp(-|x_i - y_j|² / (2σ²)) @ w without storing the kernel matrix.

    Args:
        x: (n, d), y: (m, d), w: (m, p): torch tensors or NumPy arrays (moved to the kernel's device);
            rows may be strided (views into a larger buffer are read in place), columns must be dense.
        bandwidth: σ.
        exclude_diagonal: treat k(x_i, y_i) as 0 (x and y are the same rows: the unbiased estimator).
        block: tile size BM = BN = BP (default 64; at least 16, a power of two).

    Returns:
        (n, p) float64 torch tensor on the kernel's device (float32 tile products, float64 sums).
    """
    import torch

    device = _device()
    x, y, w = (_rows_on(device, a) for a in (x, y, w))
    n, d = x.shape
    m, p = w.shape
    block = block or 64
    bk = min(block, max(16, triton.next_power_of_2(d)))
    out = torch.empty((n, p), dtype=torch.float64, device=device)
    xx = (x * x).sum(1)
    yy = (y * y).sum(1)
    grid = (triton.cdiv(n, block), triton.cdiv(p, block))
    _rbf_matmul_kernel[grid](
        x, y, w, out, xx, yy, n, m, p, d, math.log2(math.e) / (2.0 * bandwidth**2),
        x.stride(0), y.stride(0), w.stride(0), out.stride(0),
        EXCLUDE_DIAG=exclude_diagonal, BM=block, BN=block, BK=bk, BP=block,
    )
    return out


def rbf_permutation_sums(z, labels, bandwidth: float, *, block: int | None = None):
    """(q, r) of `numpy_ref.rbf_permutation_sums`, from one fused pass over the pooled rows.

    Returns NumPy float64 arrays (the reductions after the kernel run in float64).
    """
    import torch

    z = np.asarray(z, np.float32)
    z = z - z.mean(axis=0, dtype=np.float64).astype(np.float32)  # translation-invariant; keeps |z|² small
    labels = np.asarray(labels, np.float32)
    weights = np.concatenate([labels, np.ones((labels.shape[0], 1), np.float32)], axis=1)
    zt = torch.from_numpy(z)
    out = rbf_matmul(zt, zt, torch.from_numpy(weights), bandwidth, exclude_diagonal=True, block=block)
    out = out.double().cpu().numpy()
    n_perm = labels.shape[1]
    q = np.einsum("ip,ip->p", out[:, :n_perm], labels.astype(np.float64))
    return q, out[:, n_perm].copy()
