"""MMD² permutation test: exactness against the definition, p-values against a naive loop, calibration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from llmops.drift import DriftInputError, DriftWarning, mmd_test
from llmops.drift.embedding import median_bandwidth, mmd2_from_sums, permutation_labels
from llmops.drift.kernels import numpy_ref


def definition_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD² straight from its definition, in float64, with explicit pair loops over blocks."""
    x, y = x.astype(np.float64), y.astype(np.float64)

    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * k(x, y).sum() / (n * m))


@pytest.mark.parametrize("n, m, d, tile", [(2, 3, 1, None), (37, 53, 5, 16), (300, 257, 16, None), (1100, 1030, 12, None), (515, 300, 7, 128)])
def test_numpy_backend_matches_definition(n, m, d, tile):
    rng = np.random.default_rng(n * 7 + m)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (rng.standard_normal((m, d)) * 1.2 + 0.4).astype(np.float32)
    sigma = median_bandwidth(np.concatenate([x, y]))
    labels = permutation_labels(n, m, 3, seed=1)
    q, r = numpy_ref.rbf_permutation_sums(np.concatenate([x, y]), labels, sigma, tile=tile)
    got = mmd2_from_sums(q, r, labels, n, m)[0]
    want = definition_mmd2(x, y, sigma)
    assert abs(got - want) <= 1e-5 * abs(want)
    assert abs(mmd_test(x, y, permutations=5, bandwidth=sigma, backend="numpy").mmd2 - want) <= 1e-5 * abs(want)


def test_outlier_rows_take_the_explicit_distance_path_and_stay_exact():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = rng.standard_normal((150, 6)).astype(np.float32) + 0.5
    x[0] *= 60.0  # |z|²/(2σ²) far above the factored kernel's float32 range
    result = mmd_test(x, y, permutations=3, bandwidth=1.5, backend="numpy")
    want = definition_mmd2(x, y, 1.5)
    assert abs(result.mmd2 - want) <= 1e-5 * abs(want)


def test_permutation_pvalue_equals_naive_loop_with_the_same_permutations():
    rng = np.random.default_rng(11)
    n, m, perms = 40, 31, 60
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (rng.standard_normal((m, 4)) + 0.25).astype(np.float32)
    result = mmd_test(x, y, permutations=perms, bandwidth=1.3, backend="numpy", seed=7)
    pooled = np.concatenate([x, y])
    labels = permutation_labels(n, m, perms, seed=7)
    naive = []
    for p in range(1, perms + 1):
        in_ref = labels[:, p] == 1
        naive.append(definition_mmd2(pooled[in_ref], pooled[~in_ref], 1.3))
    naive = np.array(naive)
    np.testing.assert_allclose(result.null, naive, rtol=1e-4, atol=1e-7)
    observed = definition_mmd2(x, y, 1.3)
    naive_p = (1 + np.count_nonzero(naive >= observed)) / (1 + perms)
    assert result.p_value == naive_p
    assert 0.0 < result.p_value < 1.0 and np.unique(labels[:, 1:].sum(0)).tolist() == [n]


def test_calibration_under_no_drift_and_power_under_a_mean_shift():
    # 200 seeded trials each; 199 permutations so that p < 0.05 has probability 9/200 under the null.
    rejections_null = rejections_shift = 0
    for trial in range(200):
        rng = np.random.default_rng(1000 + trial)
        x = rng.standard_normal((30, 3)).astype(np.float32)
        y = rng.standard_normal((30, 3)).astype(np.float32)
        rejections_null += mmd_test(x, y, permutations=199, backend="numpy", seed=trial).p_value < 0.05
        rejections_shift += mmd_test(x, y + 0.8, permutations=199, backend="numpy", seed=trial).p_value < 0.05
    assert 0.02 <= rejections_null / 200 <= 0.09
    assert rejections_shift / 200 >= 0.95


def test_result_fields_and_centroid_distance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3)).astype(np.float32)
    y = x[::-1] + np.array([3.0, 4.0, 0.0], np.float32)
    result = mmd_test(x, y, permutations=20, backend="cpu", seed=0)
    assert result.backend == "numpy" and result.n_reference == 50 and result.n_current == 50
    assert result.drift and result.p_value == pytest.approx(1 / 21)
    assert result.centroid_distance == pytest.approx(5.0, rel=1e-5)
    assert result.bandwidth > 0 and result.seconds > 0 and result.null.shape == (20,)
    assert "null" not in result.to_dict() and result.to_dict()["drift"] is True


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.standard_normal((45, 5)).astype(np.float32)
    from_numpy = mmd_test(x, y, permutations=10, bandwidth=2.0, backend="numpy", seed=3)
    from_torch = mmd_test(torch.from_numpy(x), torch.from_numpy(y), permutations=10, bandwidth=2.0, backend="numpy", seed=3)
    assert from_torch.mmd2 == from_numpy.mmd2 and from_torch.p_value == from_numpy.p_value


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 4))
    with pytest.raises(DriftInputError, match="dimensions differ: reference has 4, current has 3"):
        mmd_test(x, rng.standard_normal((10, 3)))
    with pytest.raises(DriftInputError, match="current set has 0 usable rows"):
        mmd_test(x, np.zeros((0, 4)))
    with pytest.raises(DriftInputError, match="reference set is empty"):
        mmd_test([], x)
    with pytest.raises(DriftInputError, match="2-D"):
        mmd_test(x[0], x)
    with pytest.raises(DriftInputError, match="bandwidth"):
        mmd_test(x, x + 1, bandwidth=-1.0)
    with pytest.raises(DriftInputError, match="median distance"):
        mmd_test(np.ones((5, 2)), np.ones((5, 2)))
    all_nan = np.full((3, 4), np.nan)
    with pytest.warns(DriftWarning), pytest.raises(DriftInputError, match="3 dropped for NaN"):
        mmd_test(x, all_nan)


def test_nan_rows_are_dropped_with_a_counting_warning():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.standard_normal((20, 4)).astype(np.float32)
    y_nan = y.copy()
    y_nan[[3, 7]] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = mmd_test(x, y_nan, permutations=10, bandwidth=2.0, backend="numpy")
    assert any("dropped 2 of 20 current rows" in str(w.message) for w in caught)
    clean = mmd_test(x, np.delete(y, [3, 7], axis=0), permutations=10, bandwidth=2.0, backend="numpy")
    assert result.n_current == 18 and result.mmd2 == clean.mmd2


def test_unknown_backend_is_an_error():
    from llmops.errors import LlmopsError

    with pytest.raises(LlmopsError, match="unknown drift backend"):
        mmd_test(np.eye(3), np.eye(3), backend="tpu")
