"""The GPU backend's tile schedule, written once for any array module.

`tiled_permutation_sums` walks the tile pairs I <= J of the pooled rows and asks a `TileOps` for
the three per-tile steps: the Gram product, the fused distance -> exp -> float16 kernel tile, and
the float16 x float16 -> float32 product with the label columns. Each tile's product is added
into a float64 accumulator: a float32 running sum over N / tile tiles loses digits as N grows, and
MMD² is a small difference of these large sums. `cupy_kernels.CupyTileOps`
runs them as cuBLAS calls and a custom CuPy kernel. `NumpyTileOps` runs the same steps with the
same roundings on the CPU, so CI checks the schedule (tile edges, symmetry, diagonal, streaming)
against the independent `numpy_ref` twin without a GPU.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["NumpyTileOps", "tiled_permutation_sums", "labels_from_keys"]


class NumpyTileOps:
    """The per-tile steps in NumPy, rounding like the GPU (float16 kernel values, float32 sums)."""

    xp = np

    def to_device(self, rows):
        return np.asarray(rows, np.float32)

    def gram_precision(self):
        return contextlib.nullcontext()

    def gram(self, a, b, out) -> None:
        np.matmul(a, b.T, out=out)

    def rbf_tile(self, g, h_row, h_col, row0: int, col0: int, out) -> None:
        e = np.minimum(g - h_row[:, None] - h_col[None, :], 0.0)
        out[...] = np.exp(e)
        rows, cols = g.shape
        diag = np.arange(max(row0, col0), min(row0 + rows, col0 + cols))
        out[diag - row0, diag - col0] = 0.0

    def gemm(self, k, w, out, alpha: float, beta: float) -> None:
        product = np.matmul(k.astype(np.float32), w.astype(np.float32))
        if beta:
            out += alpha * product
        else:  # like BLAS, beta = 0 never reads `out` (it may hold garbage)
            out[...] = alpha * product

    def colsum(self, k):
        return k.sum(axis=0, dtype=np.float32)


def tiled_permutation_sums(z, labels, bandwidth: float, *, ops, tile: int):
    """(q, r) of `numpy_ref.rbf_permutation_sums`, tile pair by tile pair, on `ops.xp` arrays.

    `z` may live on the host while `ops` works on a device: rows are moved one tile at a time,
    so inputs larger than device memory stream through. Returns float64 arrays of `ops.xp`.
    """
    xp = ops.xp
    host_mean = z.mean(axis=0, dtype=np.float64).astype(np.float32)
    mean = ops.to_device(host_mean)
    n_rows = z.shape[0]
    inv = np.float32(1.0 / bandwidth)
    n_perm = labels.shape[1]
    width = -(-(n_perm + 1) // 8) * 8  # tensor-core GEMMs want multiples of 8
    weights = xp.zeros((n_rows, width), xp.float16)
    weights[:, :n_perm] = labels
    weights[:, n_perm] = 1  # the kernel row sums ride along as one more column
    q = xp.zeros(n_perm, xp.float64)
    r = xp.zeros(n_rows, xp.float64)

    def block(start: int):
        rows = (ops.to_device(z[start : start + tile]) - mean) * inv
        return rows, 0.5 * (rows * rows).sum(axis=1)

    # Flat buffers reshaped per tile keep every tile C-contiguous, edge tiles included.
    gram = xp.empty(tile * tile, xp.float32)
    kern = xp.empty(tile * tile, xp.float16)
    tile_product = xp.empty(tile * width, xp.float32)
    acc = xp.empty(tile * width, xp.float64)
    r_col = xp.zeros(n_rows, xp.float64)
    with ops.gram_precision():
        for i0 in range(0, n_rows, tile):
            z_i, h_i = block(i0)
            bi = z_i.shape[0]
            # acc = K_II W_I + 2 sum_{J>I} K_IJ W_J: an off-diagonal tile also stands for its
            # transpose, hence alpha = 2. Each tile's float32 product joins a float64 sum.
            acc_i = acc[: bi * width].reshape(bi, width)
            acc_i[...] = 0.0
            product = tile_product[: bi * width].reshape(bi, width)
            for j0 in range(i0, n_rows, tile):
                z_j, h_j = (z_i, h_i) if j0 == i0 else block(j0)
                bj = z_j.shape[0]
                g = gram[: bi * bj].reshape(bi, bj)
                ops.gram(z_i, z_j, g)
                k = kern[: bi * bj].reshape(bi, bj)
                ops.rbf_tile(g, h_i, h_j, i0, j0, k)
                ops.gemm(k, weights[j0 : j0 + bj], product, 1.0 if j0 == i0 else 2.0, 0.0)
                acc_i += product
                # column sums: the transpose tile's row sums (J > I), or K_II·1 itself (J = I)
                column_sums = ops.colsum(k)
                r_col[j0 : j0 + bj] += column_sums
                if j0 == i0:
                    diagonal_tile_sums = column_sums
            q += (acc_i[:, :n_perm] * weights[i0 : i0 + bi, :n_perm]).sum(axis=0)
            # acc's ones column = K_II·1 + 2·sum_{J>I} K_IJ·1 and r_col = K_II·1 + sum_{J<I} K_JIᵀ·1, so
            # r_I = K_II·1 + sum_{J>I} K_IJ·1 + sum_{J<I} K_JIᵀ·1 = acc/2 + r_col - K_II·1/2.
            r[i0 : i0 + bi] = 0.5 * acc_i[:, n_perm] + r_col[i0 : i0 + bi] - 0.5 * diagonal_tile_sums
    return q, r

_KEY_BITS = 44  # random bits per key: ties (broken by row order) have probability ~N²/2^45


def labels_from_keys(uniform, n: int):
    """0/1 labels (P, N) marking, in each row of `uniform` (P x N floats in [0, 1)), the n smallest.

    That is a uniformly random n-subset per row. One 1-D sort of 64-bit keys (row index in the
    high bits, 44 random bits below) replaces a segmented sort: library radix sorts are fast on
    1-D integer keys and slow on 2-D row-wise sorts.
    """
    xp = np if isinstance(uniform, np.ndarray) else __import__("cupy")
    perms, total = uniform.shape
    if perms >= 1 << (64 - _KEY_BITS):
        raise ValueError(f"at most {(1 << (64 - _KEY_BITS)) - 1} permutations")
    keys = (uniform * float(1 << _KEY_BITS)).astype(xp.uint64)
    keys |= xp.arange(perms, dtype=xp.uint64)[:, None] << xp.uint64(_KEY_BITS)
    order = xp.argsort(keys.ravel()).reshape(perms, total)  # row p's flat indices, smallest keys first
    labels = xp.zeros(perms * total, xp.float16)
    labels[order[:, :n].ravel()] = 1
    return labels.reshape(perms, total)
