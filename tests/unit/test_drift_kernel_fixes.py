"""CPU checks of the GPU kernel fixes: aligned histogram loads, int64 Triton offsets, float64 tile sums.

Each bug lives in GPU code that cannot run here, so each test drives the code's CPU twin of the
GPU schedule: `histogram_plan.emulate_histogram` (the histogram kernel's loads), Triton's
interpreter (the real kernel source), and `tiles.tiled_permutation_sums` with NumPy tile steps.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llmops.drift.kernels.histogram_plan import HistogramPlan, MisalignedLoad, emulate_histogram, plan_histogram
from llmops.drift.kernels.tiles import NumpyTileOps, tiled_permutation_sums
from llmops.extras import has_triton

H100_SHARED, H100_SMS = 227 * 1024, 132


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("start, stop", [(1, None), (2, None), (3, -1), (0, None), (5, 6), (1, 3)])
def test_histogram_of_unaligned_views_loads_aligned_and_counts_exactly(dtype, start, stop):
    rng = np.random.default_rng(start)
    vocab = 128_256
    base = np.minimum(rng.zipf(1.2, 100_003) - 1, vocab - 1).astype(dtype)
    assert _address(base) % 16 == 0  # NumPy's allocations are aligned: the view makes the offset
    ids = base[start:stop]
    address = _address(ids)
    plan = plan_histogram(address, ids.size, ids.itemsize, vocab, shared_bytes=H100_SHARED, sms=H100_SMS)
    assert plan.head == min(ids.size, (-address % 16) // ids.itemsize)
    counts = emulate_histogram(ids, vocab, plan, address)
    np.testing.assert_array_equal(counts, np.bincount(ids, minlength=vocab))


def test_the_old_schedule_faults_on_ids_1_and_the_new_one_does_not():
    ids = np.arange(1000, dtype=np.int32)[1:]
    address = _address(ids)
    plan = plan_histogram(address, ids.size, 4, 1000, shared_bytes=H100_SHARED, sms=H100_SMS)
    old = HistogramPlan(n=plan.n, itemsize=4, head=0, slice_bins=plan.slice_bins, slices=plan.slices, blocks_x=plan.blocks_x)
    with pytest.raises(MisalignedLoad, match="not 16-byte aligned"):
        emulate_histogram(ids, 1000, old, address)
    assert plan.head == 3
    np.testing.assert_array_equal(emulate_histogram(ids, 1000, plan, address), np.bincount(ids, minlength=1000))


def test_histogram_slices_a_vocabulary_larger_than_shared_memory():
    ids = np.random.default_rng(0).integers(0, 200_000, 50_001).astype(np.int64)[1:]
    plan = plan_histogram(_address(ids), ids.size, 8, 200_000, shared_bytes=48 * 1024, sms=4)
    assert plan.slices == 17 and plan.slices * plan.slice_bins >= 200_000
    np.testing.assert_array_equal(emulate_histogram(ids, 200_000, plan, _address(ids)), np.bincount(ids, minlength=200_000))


def test_histogram_plan_rejects_ids_off_their_own_alignment():
    with pytest.raises(ValueError, match="aligned to their size"):
        plan_histogram(0x1002, 10, 4, 100, shared_bytes=H100_SHARED, sms=H100_SMS)


_INT64_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    from llmops.drift.kernels import numpy_ref, triton_kernels

    stride, d = 2**30 + 1, 8  # row 2 starts at element 2^31 + 2, past int32
    path = os.path.join(sys.argv[1], "rows.f32")
    with open(path, "wb") as f:
        f.truncate((2 * stride + d) * 4)  # sparse: only the touched pages take disk or memory
    buf = np.memmap(path, dtype=np.float32, mode="r+")
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((3, d)).astype(np.float32)
    for i in range(3):
        buf[i * stride : i * stride + d] = dense[i]
    x = np.lib.stride_tricks.as_strided(buf, shape=(3, d), strides=(stride * 4, 4))
    y = rng.standard_normal((5, d)).astype(np.float32)
    w = rng.standard_normal((5, 2)).astype(np.float32)
    got = triton_kernels.rbf_matmul(x, y, w, 2.0, block=16).numpy()
    print("max_abs_error", float(np.abs(got - numpy_ref.rbf_matmul(dense, y, w, 2.0)).max()))
    """
)


@pytest.mark.skipif(not has_triton(), reason="triton is not installed (pip install triton)")
def test_triton_kernel_indexes_rows_past_2_to_the_31_elements(tmp_path):
    # A subprocess: under int32 offsets the interpreter reads a wrapped address and the process dies.
    done = subprocess.run([sys.executable, "-c", _INT64_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"kernel crashed (rc {done.returncode}): {done.stderr[-2000:]}"
    error = float(done.stdout.split("max_abs_error")[1])
    assert error < 1e-5


class _RankOneTileOps(NumpyTileOps):
    """Tile steps for k(z_i, z_j) = a_i a_j with a = exp(-|z|²/2) in float16: a tile is an outer product.

    Each step costs O(tile) instead of O(tile²), so the real schedule runs at 200k rows on a CPU
    with the GPU's roundings (float16 kernel values, float32 tile products); the exact sums have a
    closed form in float64.
    """

    def gram(self, a, b, out) -> None:
        pass

    def rbf_tile(self, g, h_row, h_col, row0, col0, out) -> None:
        as_f16 = lambda h: np.exp(-h).astype(np.float16).astype(np.float64)  # noqa: E731
        self.tile = (as_f16(h_row), as_f16(h_col), row0, col0)

    def _diagonal(self):
        a_row, a_col, row0, col0 = self.tile
        d = np.arange(max(row0, col0), min(row0 + len(a_row), col0 + len(a_col)))
        return d - row0, d - col0

    def gemm(self, k, w, out, alpha, beta) -> None:
        a_row, a_col, _, _ = self.tile
        w64 = w.astype(np.float64)
        product = a_row[:, None] * (a_col @ w64)[None, :]
        ri, ci = self._diagonal()
        product[ri] -= (a_row[ri] * a_col[ci])[:, None] * w64[ci]
        product = (alpha * product).astype(np.float32)  # a GEMM's float32 output
        if beta:
            out += product
        else:
            out[...] = product

    def colsum(self, k):
        a_row, a_col, _, _ = self.tile
        sums = a_col * a_row.sum()
        ri, ci = self._diagonal()
        sums[ci] -= a_row[ri] * a_col[ci]
        return sums.astype(np.float32)


def test_tile_sums_accumulate_in_float64_at_200k_rows():
    from llmops.drift.embedding import permutation_labels

    n_rows, perms = 200_000, 7
    z = np.random.default_rng(0).uniform(0, 1.5, (n_rows, 1)).astype(np.float32)
    labels = permutation_labels(n_rows // 2, n_rows - n_rows // 2, perms, seed=1)[:, :perms]
    q, r = tiled_permutation_sums(z, labels, 1.0, ops=_RankOneTileOps(), tile=8192)  # the GPU's tile size

    centred = (z - z.mean(axis=0, dtype=np.float64).astype(np.float32))[:, 0]
    a = np.exp(-0.5 * centred * centred).astype(np.float16).astype(np.float64)
    groups = labels.astype(np.float64)
    q_exact = (a @ groups) ** 2 - (a * a) @ groups  # sum over i != j in a group of a_i a_j
    r_exact = a * (a.sum() - a)
    # float32 sums across the 25 tiles of a row block gave 3.7e-9 (q) and 2.3e-7 (r); float64, 10x less
    assert np.abs(q / q_exact - 1).max() < 1e-9
    assert np.abs(r / r_exact - 1).max() < 5e-8
