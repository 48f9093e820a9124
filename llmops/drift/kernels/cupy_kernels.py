"""CuPy kernels: tiled MMD permutation sums and shared-memory token histograms on the GPU.

MMD: for each tile pair I <= J (symmetry halves the work) one cuBLAS GEMM gives the Gram tile,
one custom elementwise kernel turns it into kernel values in float16 (distance, exp and the
diagonal mask fused: the tile is read once, written at half width), and one tensor-core GEMM
(float16 inputs, float32 accumulation) multiplies it by all permutation label columns at once.
Rows that are not on the device (NumPy input larger than GPU memory) are streamed tile by tile.

Histograms: each block keeps a private histogram of one vocabulary slice in shared memory
(32-bit counters), reads its share of the ids with 16-byte loads, and adds its counts to the
global histogram once at the end; slices are sized to the device's shared memory.

Twins: `numpy_ref.rbf_permutation_sums` and `numpy_ref.token_histogram`.
"""

from __future__ import annotations

import contextlib

import numpy as np

from llmops.extras import require

cp = require("cupy", "the GPU drift backend")

__all__ = ["rbf_permutation_sums", "permutation_labels", "token_histogram", "TILE"]

TILE = 8192  # rows per tile: a float32 Gram tile is 256 MiB, big enough to keep the GPU saturated

_CUDA_R_16F, _CUDA_R_32F = 2, 0
_CUBLAS_COMPUTE_32F = 68  # cublasComputeType_t: float32 accumulation, also for float16 inputs
_CUBLAS_GEMM_DEFAULT = -1

_rbf_tile_f16 = cp.ElementwiseKernel(
    "float32 g, raw float32 h_row, raw float32 h_col, int64 cols, int64 row0, int64 col0",
    "float16 k",
    """
    const long long row = i / cols, col = i % cols;
    // exponent = -|z_r - z_c|²/2 in bandwidth units; rounding can make it slightly positive
    float e = fminf(g - h_row[row] - h_col[col], 0.0f);
    k = (row0 + row == col0 + col) ? (float16)0.0f : (float16)__expf(e);
    """,
    "llmops_rbf_tile_f16",
)

_HISTOGRAM_SOURCE = r"""
extern "C" __global__ void llmops_histogram_slice_%(name)s(
        const %(ctype)s* __restrict__ ids, long long n, int vocab, int slice_bins,
        unsigned long long* __restrict__ out) {
    extern __shared__ unsigned int bins[];
    const int lo = blockIdx.y * slice_bins;
    const int width = min(slice_bins, vocab - lo);
    for (int b = threadIdx.x; b < width; b += blockDim.x) bins[b] = 0u;
    __syncthreads();
    const long long n_vec = n / %(vec)d;
    const %(vtype)s* vec = reinterpret_cast<const %(vtype)s*>(ids);
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += step) {
        %(vtype)s v = vec[i];
        %(body)s
    }
    for (long long i = n_vec * %(vec)d + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        unsigned int a = (unsigned int)(ids[i] - lo);
        if (a < (unsigned int)width) atomicAdd(&bins[a], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < width; b += blockDim.x)
        if (bins[b]) atomicAdd(&out[lo + b], (unsigned long long)bins[b]);
}
"""
_ADD = "{ unsigned int a = (unsigned int)(v.%s - lo); if (a < (unsigned int)width) atomicAdd(&bins[a], 1u); }"
_VARIANTS = {
    "int32": dict(name="i32", ctype="int", vtype="int4", vec=4, body=" ".join(_ADD % c for c in "xyzw")),
    "int64": dict(name="i64", ctype="long long", vtype="longlong2", vec=2, body=" ".join(_ADD % c for c in "xy")),
}
_kernels: dict[str, object] = {}


def _histogram_kernel(dtype: str):
    if dtype not in _kernels:
        variant = _VARIANTS[dtype]
        _kernels[dtype] = cp.RawKernel(_HISTOGRAM_SOURCE % variant, f"llmops_histogram_slice_{variant['name']}")
    return _kernels[dtype]


def token_histogram(ids, vocab_size: int):
    """Counts of each id in [0, vocab_size) as a CuPy uint64 array (ids already range-checked)."""
    ids = cp.ascontiguousarray(cp.asarray(ids).ravel())
    if ids.dtype not in (cp.int32, cp.int64):
        ids = ids.astype(cp.int64)
    kernel = _histogram_kernel(str(ids.dtype))
    device = cp.cuda.Device()
    shared_max = int(device.attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024))
    slice_bins = min(int(vocab_size), shared_max // 4)
    slices = -(-int(vocab_size) // slice_bins)
    slice_bins = -(-int(vocab_size) // slices)  # even slices: every block does the same work
    kernel.max_dynamic_shared_size_bytes = slice_bins * 4
    sms = int(device.attributes["MultiProcessorCount"])
    blocks_per_sm = max(1, shared_max // (slice_bins * 4 + 1024))
    out = cp.zeros(int(vocab_size), cp.uint64)
    grid = (sms * blocks_per_sm, slices)
    kernel(grid, (1024,), (ids, cp.int64(ids.size), cp.int32(vocab_size), cp.int32(slice_bins), out), shared_mem=slice_bins * 4)
    return out


def permutation_labels(n: int, m: int, permutations: int, *, seed: int = 0):
    """(n + m, 1 + permutations) float16 0/1 labels drawn on the device; column 0 is the observed split."""
    total = n + m
    keys = cp.random.default_rng(seed).random((permutations, total), dtype=cp.float32)
    chosen = cp.argsort(keys, axis=1)[:, :n]  # the first n of a uniform random order
    labels = cp.zeros((permutations, total), cp.float16)
    labels[cp.arange(permutations)[:, None], chosen] = 1
    observed = cp.zeros((1, total), cp.float16)
    observed[0, :n] = 1
    return cp.ascontiguousarray(cp.concatenate([observed, labels]).T)


def _gemm_f16_f32(a, b, out) -> None:
    """out = a @ b for C-contiguous float16 a, b and float32 out, accumulating in float32."""
    from cupy.cuda import cublas

    rows, inner = a.shape
    cols = b.shape[1]
    one, zero = np.array(1.0, np.float32), np.array(0.0, np.float32)
    handle = cp.cuda.device.get_cublas_handle()
    # Row-major out = a @ b is column-major outᵀ = bᵀ @ aᵀ: pass b first, no transposes.
    cublas.gemmEx(
        handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, cols, rows, inner,
        one.ctypes.data, b.data.ptr, _CUDA_R_16F, cols, a.data.ptr, _CUDA_R_16F, inner,
        zero.ctypes.data, out.data.ptr, _CUDA_R_32F, cols, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT,
    )


@contextlib.contextmanager
def _tf32_gram():
    """Let float32 GEMMs use TF32 tensor cores for the Gram tiles, restoring CuPy's setting after.

    The permutation test stays exact under this rounding: every permutation sees the same kernel
    matrix; only the reported MMD² moves, by about 1e-4 relative (checked against the twin).
    """
    try:
        from cupy._core import _routines_linalg as linalg

        previous = linalg.get_compute_type(np.float32)
        linalg.set_compute_type(np.float32, 7)  # COMPUTE_TYPE_TF32
    except (ImportError, AttributeError):  # a CuPy without the switch computes in plain float32
        yield
        return
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, previous)


def rbf_permutation_sums(z, labels, bandwidth: float, *, tile: int = TILE):
    """(q, r) of `numpy_ref.rbf_permutation_sums` on the GPU, as CuPy float64 arrays.

    `z` may be a CuPy array or a NumPy array (streamed to the device one tile at a time);
    `labels` is a CuPy (N, P) 0/1 array.
    """
    on_host = isinstance(z, np.ndarray)
    xp = np if on_host else cp
    mean = z.mean(axis=0, dtype=xp.float64).astype(xp.float32)
    n_rows = z.shape[0]
    inv = np.float32(1.0 / bandwidth)
    n_perm = labels.shape[1]
    width = -(-(n_perm + 1) // 8) * 8  # tensor-core GEMMs want multiples of 8
    weights = cp.zeros((n_rows, width), cp.float16)
    weights[:, :n_perm] = labels
    weights[:, n_perm] = 1  # the row sums ride along as one more column
    q = cp.zeros(n_perm, cp.float64)
    r = cp.zeros(n_rows, cp.float64)

    def block(start: int):
        stop = min(start + tile, n_rows)
        rows = (cp.asarray(z[start:stop]) - cp.asarray(mean)) * inv
        return rows, 0.5 * (rows * rows).sum(axis=1)

    # Flat buffers reshaped per tile keep every tile C-contiguous, edge tiles included.
    gram = cp.empty(tile * tile, cp.float32)
    kern = cp.empty(tile * tile, cp.float16)
    prod = cp.empty(tile * width, cp.float32)
    with _tf32_gram():
        for i0 in range(0, n_rows, tile):
            z_i, h_i = block(i0)
            for j0 in range(i0, n_rows, tile):
                z_j, h_j = (z_i, h_i) if j0 == i0 else block(j0)
                bi, bj = z_i.shape[0], z_j.shape[0]
                g = gram[: bi * bj].reshape(bi, bj)
                cp.matmul(z_i, z_j.T, out=g)
                k = kern[: bi * bj].reshape(bi, bj)
                _rbf_tile_f16(g, h_i, h_j, bj, i0, j0, k)
                c = prod[: bi * width].reshape(bi, width)
                _gemm_f16_f32(k, weights[j0 : j0 + bj], c)
                scale = 1.0 if i0 == j0 else 2.0
                q += scale * (c[:, :n_perm] * weights[i0 : i0 + bi, :n_perm]).sum(axis=0, dtype=cp.float64)
                r[i0 : i0 + bi] += c[:, n_perm]
                if i0 != j0:
                    r[j0 : j0 + bj] += k.sum(axis=0, dtype=cp.float32)
    return q, r
