"""The Triton fused kernel against its NumPy twin, on CPU under TRITON_INTERPRET=1 (small sizes)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from llmops.extras import has_cuda, has_triton

pytestmark = pytest.mark.skipif(not has_triton(), reason="triton is not installed (pip install triton)")

# Without a GPU the kernel runs in Triton's interpreter. It must be chosen before anything imports
# triton (torch does, lazily, in other tests), hence at collection time rather than in a fixture.
if has_triton() and not has_cuda():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="module")
def triton_kernels():
    from llmops.drift.kernels import triton_kernels

    return triton_kernels


@pytest.mark.parametrize("n, m, d, p", [(70, 90, 20, 5), (17, 33, 3, 2)])
def test_rbf_matmul_matches_twin(triton_kernels, n, m, d, p):
    from llmops.drift.kernels import numpy_ref

    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.standard_normal((m, d)).astype(np.float32)
    w = rng.standard_normal((m, p)).astype(np.float32)
    got = triton_kernels.rbf_matmul(x, y, w, 2.5, block=32).cpu().numpy()
    np.testing.assert_allclose(got, numpy_ref.rbf_matmul(x, y, w, 2.5), rtol=1e-4, atol=1e-4)


def test_permutation_sums_and_mmd_test_match_numpy_backend(triton_kernels):
    from llmops.drift import mmd_test
    from llmops.drift.embedding import permutation_labels
    from llmops.drift.kernels import numpy_ref

    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = (rng.standard_normal((45, 6)) + 0.3).astype(np.float32)
    z = np.concatenate([x, y])
    labels = permutation_labels(50, 45, 6, seed=0)
    q, r = triton_kernels.rbf_permutation_sums(z, labels, 1.7, block=64)
    q_ref, r_ref = numpy_ref.rbf_permutation_sums(z, labels, 1.7)
    np.testing.assert_allclose(q, q_ref, rtol=1e-5)
    np.testing.assert_allclose(r, r_ref, rtol=1e-5)
    via_triton = mmd_test(x, y, permutations=6, bandwidth=1.7, backend="triton", seed=0)
    via_numpy = mmd_test(x, y, permutations=6, bandwidth=1.7, backend="numpy", seed=0)
    assert via_triton.backend == "triton"
    assert via_triton.mmd2 == pytest.approx(via_numpy.mmd2, rel=1e-4)
    assert via_triton.p_value == via_numpy.p_value
