"""CuPy kernels: tiled MMD permutation sums and shared-memory token histograms on the GPU.

MMD (schedule in `tiles.py`): for each tile pair I <= J (symmetry halves the work) one cuBLAS
TF32 GEMM gives the Gram tile; one custom elementwise kernel turns it into kernel values in
float16 (distance, exp and the diagonal mask fused: the tile is read once, written at half width);
one tensor-core GEMM (float16 inputs, float32 accumulation) multiplies it by all permutation label
columns at once, accumulating in place across the row block; one GEMV gives its column sums.
Rows that are not on the device (NumPy input larger than GPU memory) are streamed tile by tile.

Histograms: each block keeps a private histogram of one vocabulary slice in shared memory
(32-bit counters), reads its share of the ids with 16-byte loads, and adds its counts to the
global histogram once at the end; slices are sized to the device's shared memory. Views that start
off a 16-byte boundary (``ids[1:]``) read a short scalar head first (`histogram_plan`).

Twins: `numpy_ref.rbf_permutation_sums` and `numpy_ref.token_histogram`.
"""

from __future__ import annotations

import contextlib

import numpy as np

from llmops.drift.kernels.histogram_plan import THREADS_PER_BLOCK, plan_histogram
from llmops.drift.kernels.tiles import labels_from_keys, tiled_permutation_sums
from llmops.extras import require

cp = require("cupy", "the GPU drift backend")

__all__ = ["CupyTileOps", "rbf_permutation_sums", "permutation_labels", "token_histogram", "TILE"]

TILE = 8192  # rows per tile: a float32 Gram tile is 256 MiB, big enough to keep the GPU saturated

_CUDA_R_16F, _CUDA_R_32F = 2, 0
_CUBLAS_COMPUTE_32F = 68  # cublasComputeType_t: float32 accumulation, also for float16 inputs
_CUBLAS_GEMM_DEFAULT = -1

_rbf_tile_f16 = cp.ElementwiseKernel(
    "float32 g, raw float32 h_row, raw float32 h_col, int64 cols, int64 row0, int64 col0",
    "float16 k",
    """
    // 32-bit index arithmetic (a tile has < 2^31 entries): 64-bit division is slow on GPUs
    const unsigned int flat = (unsigned int)i, width = (unsigned int)cols;
    const unsigned int row = flat / width, col = flat - row * width;
    // exponent = -|z_r - z_c|²/2 in bandwidth units; rounding can make it slightly positive
    float e = fminf(g - h_row[row] - h_col[col], 0.0f);
    const float v = (row0 + row == col0 + col) ? 0.0f : __expf(e);  // the diagonal is excluded exactly
    k = v;
    """,
    "llmops_rbf_tile_f16",
)

_HISTOGRAM_SOURCE = r"""
extern "C" __global__ void llmops_histogram_slice_%(name)s(
        const %(ctype)s* __restrict__ ids, long long n, long long head, int vocab, int slice_bins,
        unsigned long long* __restrict__ out) {
    // ids[0:head] lie before the first 16-byte boundary; vector loads start at ids + head.
    extern __shared__ unsigned int bins[];
    const int lo = blockIdx.y * slice_bins;
    const int width = min(slice_bins, vocab - lo);
    for (int b = threadIdx.x; b < width; b += blockDim.x) bins[b] = 0u;
    __syncthreads();
    const long long n_vec = (n - head) / %(vec)d;
    const %(vtype)s* vec = reinterpret_cast<const %(vtype)s*>(ids + head);
    const long long step = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = first; i < n_vec; i += step) {
        %(vtype)s v = vec[i];
        %(body)s
    }
    // scalar ids: the head, then the tail after the last whole vector
    const long long tail = head + n_vec * %(vec)d;
    for (long long t = first; t < head + (n - tail); t += step) {
        const long long i = t < head ? t : tail + (t - head);
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
    plan = plan_histogram(
        ids.data.ptr, ids.size, ids.itemsize, int(vocab_size), shared_bytes=shared_max, sms=int(device.attributes["MultiProcessorCount"])
    )
    kernel.max_dynamic_shared_size_bytes = plan.slice_bins * 4
    out = cp.zeros(int(vocab_size), cp.uint64)
    args = (ids, cp.int64(ids.size), cp.int64(plan.head), cp.int32(vocab_size), cp.int32(plan.slice_bins), out)
    kernel((plan.blocks_x, plan.slices), (THREADS_PER_BLOCK,), args, shared_mem=plan.slice_bins * 4)
    return out


def permutation_labels(n: int, m: int, permutations: int, *, seed: int = 0):
    """(n + m, 1 + permutations) float16 0/1 labels drawn on the device; column 0 is the observed split."""
    uniform = cp.random.default_rng(seed).random((permutations, n + m), dtype=cp.float64)
    labels = labels_from_keys(uniform, n)
    del uniform
    observed = cp.zeros((1, n + m), cp.float16)
    observed[0, :n] = 1
    return cp.ascontiguousarray(cp.concatenate([observed, labels]).T)


def _gemm_f16_f32(a, b, out, alpha: float = 1.0, beta: float = 0.0) -> None:
    """out = alpha * a @ b + beta * out for C-contiguous float16 a, b and float32 out (float32 sums)."""
    from cupy.cuda import cublas

    rows, inner = a.shape
    cols = b.shape[1]
    one, zero = np.array(alpha, np.float32), np.array(beta, np.float32)
    handle = cp.cuda.device.get_cublas_handle()
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)  # alpha and beta live on the host
    try:
        # Row-major out = a @ b is column-major outᵀ = bᵀ @ aᵀ: pass b first, no transposes.
        cublas.gemmEx(
            handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, cols, rows, inner,
            one.ctypes.data, b.data.ptr, _CUDA_R_16F, cols, a.data.ptr, _CUDA_R_16F, inner,
            zero.ctypes.data, out.data.ptr, _CUDA_R_32F, cols, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT,
        )
    finally:
        cublas.setPointerMode(handle, mode)


class CupyTileOps:
    """The per-tile steps of `tiles.tiled_permutation_sums` on the GPU."""

    xp = cp

    def to_device(self, rows):
        return cp.asarray(rows, dtype=cp.float32)

    @contextlib.contextmanager
    def gram_precision(self):
        """Let float32 GEMMs use TF32 tensor cores for the Gram tiles, restoring CuPy's setting after.

        The permutation test stays exact under this rounding: every permutation sees the same kernel
        matrix; only the reported MMD² moves (tests/gpu bounds it against the NumPy twin).
        """
        try:
            from cupy._core import _routines_linalg as linalg

            previous = linalg.get_compute_type(np.float32)
            linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
        except (ImportError, AttributeError):  # a CuPy without the switch computes in plain float32
            yield
            return
        try:
            yield
        finally:
            linalg.set_compute_type(np.float32, previous)

    def gram(self, a, b, out) -> None:
        cp.matmul(a, b.T, out=out)

    def rbf_tile(self, g, h_row, h_col, row0: int, col0: int, out) -> None:
        _rbf_tile_f16(g, h_row, h_col, g.shape[1], row0, col0, out)

    def gemm(self, k, w, out, alpha: float, beta: float) -> None:
        _gemm_f16_f32(k, w, out, alpha, beta)

    def colsum(self, k):
        # ones @ k through cuBLAS: a GEMV that streams the tile once, instead of a strided
        # axis-0 reduction over a row-major tile.
        ones = self._ones(k.shape[0])
        out = cp.empty((1, k.shape[1]), cp.float32)
        _gemm_f16_f32(ones, k, out)
        return out[0]

    def _ones(self, rows: int):
        if getattr(self, "_ones_cache", None) is None or self._ones_cache.shape[1] < rows:
            self._ones_cache = cp.ones((1, rows), cp.float16)
        return self._ones_cache[:, :rows]


def rbf_permutation_sums(z, labels, bandwidth: float, *, tile: int = TILE):
    """(q, r) of `numpy_ref.rbf_permutation_sums` on the GPU, as CuPy float64 arrays.

    `z` may be a CuPy array or a NumPy array (streamed to the device one tile at a time);
    `labels` is a CuPy (N, P) 0/1 array.
    """
    return tiled_permutation_sums(z, labels, bandwidth, ops=CupyTileOps(), tile=tile)
