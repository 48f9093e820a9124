"""GPU drift kernels (CuPy, Triton on CUDA) against their NumPy twins; skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from llmops.extras import has_cuda, has_cupy, has_triton

pytestmark = pytest.mark.gpu
needs_cupy = pytest.mark.skipif(not has_cupy(), reason="needs CuPy and a CUDA GPU")


@needs_cupy
@pytest.mark.parametrize("n, m, d, perms, tile", [(300, 257, 16, 9, 128), (1500, 1100, 384, 33, 512), (5000, 4000, 64, 100, None)])
def test_cupy_permutation_sums_match_twin(n, m, d, perms, tile):
    import cupy as cp

    from llmops.drift.embedding import mmd2_from_sums, permutation_labels
    from llmops.drift.kernels import cupy_kernels, numpy_ref

    rng = np.random.default_rng(n)
    z = np.concatenate([rng.standard_normal((n, d)), rng.standard_normal((m, d)) + 0.2]).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = permutation_labels(n, m, perms, seed=3)
    kwargs = {"tile": tile} if tile else {}
    for source in (cp.asarray(z), z):  # on device, and streamed from host memory
        q, r = cupy_kernels.rbf_permutation_sums(source, cp.asarray(labels), 0.8, **kwargs)
        q_ref, r_ref = numpy_ref.rbf_permutation_sums(z, labels, 0.8)
        # TF32 Gram + float16 kernel values: ~1e-3 relative per entry, averaging out in the sums.
        np.testing.assert_allclose(q.get(), q_ref, rtol=2e-3)
        np.testing.assert_allclose(r.get(), r_ref, rtol=2e-3)
        stats = mmd2_from_sums(q.get(), r.get(), labels, n, m)
        stats_ref = mmd2_from_sums(q_ref, r_ref, labels, n, m)
        assert np.corrcoef(stats, stats_ref)[0, 1] > 0.99


@needs_cupy
def test_cupy_mmd_test_detects_shift_and_keeps_level():
    import cupy as cp

    from llmops.drift import mmd_test

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    y = rng.standard_normal((2000, 32)).astype(np.float32)
    same = mmd_test(cp.asarray(x), cp.asarray(y), permutations=500, backend="gpu", seed=1)
    moved = mmd_test(cp.asarray(x), cp.asarray(y + 0.2), permutations=500, backend="gpu", seed=1)
    cpu = mmd_test(x, y + 0.2, permutations=500, backend="cpu", seed=1)
    assert same.backend == "cupy" and same.p_value > 0.01
    assert moved.p_value < 0.01 and moved.mmd2 == pytest.approx(cpu.mmd2, rel=1e-2)
    assert moved.bandwidth == pytest.approx(cpu.bandwidth, rel=1e-5)


@needs_cupy
def test_cupy_permutation_labels_are_splits():
    from llmops.drift.kernels import cupy_kernels

    labels = cupy_kernels.permutation_labels(37, 29, 50, seed=0).get().astype(np.int64)
    assert labels.shape == (66, 51) and (labels.sum(0) == 37).all() and labels[:37, 0].all()
    assert len({tuple(col) for col in labels[:, 1:].T}) == 50


@needs_cupy
@pytest.mark.parametrize("dtype, size, vocab", [("int32", 1_000_003, 128_256), ("int64", 77_777, 1_000), ("int32", 5, 7)])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_cupy_histogram_matches_bincount(dtype, size, vocab, offset):
    import cupy as cp

    from llmops.drift.kernels import cupy_kernels, numpy_ref

    rng = np.random.default_rng(size)
    ids = np.minimum(rng.zipf(1.2, size) - 1, vocab - 1).astype(dtype)
    on_device = cp.asarray(ids)[offset:]  # a view: offsets 1-3 start off a 16-byte boundary
    assert (offset * ids.itemsize) % 16 == 0 or on_device.data.ptr % 16 != 0
    got = cupy_kernels.token_histogram(on_device, vocab).get()
    np.testing.assert_array_equal(got, numpy_ref.token_histogram(ids[offset:], vocab))


@needs_cupy
def test_torch_cuda_tensors_go_through_dlpack():
    torch = pytest.importorskip("torch")
    from llmops.drift import mmd_test, token_drift

    x = torch.randn(500, 16, device="cuda")
    y = torch.randn(400, 16, device="cuda") + 0.5
    assert mmd_test(x, y, permutations=100, backend="gpu").p_value < 0.05
    ids = torch.randint(0, 100, (10_000,), device="cuda", dtype=torch.int32)
    assert token_drift(ids, ids, 100, backend="gpu").js_divergence == 0.0


@pytest.mark.skipif(not (has_cuda() and has_triton()), reason="needs Triton and a CUDA GPU")
def test_triton_on_cuda_matches_twin():
    from llmops.drift.kernels import numpy_ref, triton_kernels

    rng = np.random.default_rng(0)
    for n, m, d, p in [(1000, 777, 384, 101), (129, 65, 7, 3)]:
        x = rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
        y = rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
        w = rng.standard_normal((m, p)).astype(np.float32)
        got = triton_kernels.rbf_matmul(x, y, w, 1.0).cpu().numpy()
        want = numpy_ref.rbf_matmul(x, y, w, 1.0)
        np.testing.assert_allclose(got, want, rtol=5e-3, atol=5e-3 * np.abs(want).max())  # tl.dot uses TF32
