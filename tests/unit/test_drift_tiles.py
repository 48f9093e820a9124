"""The GPU tile schedule, run on the CPU with NumPy tile steps that round like the GPU, against the twin."""

from __future__ import annotations

import numpy as np
import pytest

from llmops.drift.embedding import median_bandwidth, mmd2_from_sums, permutation_labels
from llmops.drift.kernels import numpy_ref
from llmops.drift.kernels.tiles import NumpyTileOps, tiled_permutation_sums


@pytest.mark.parametrize("n, m, d, perms, tile", [(3, 2, 2, 1, 1), (300, 257, 16, 9, 128), (700, 333, 64, 40, 256), (100, 90, 5, 7, 1000)])
def test_gpu_tile_schedule_matches_twin(n, m, d, perms, tile):
    rng = np.random.default_rng(n + tile)
    z = np.concatenate([rng.standard_normal((n, d)), rng.standard_normal((m, d)) + 0.1]).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    sigma = median_bandwidth(z)
    labels = permutation_labels(n, m, perms, seed=2)
    q, r = tiled_permutation_sums(z, labels, sigma, ops=NumpyTileOps(), tile=tile)
    q_ref, r_ref = numpy_ref.rbf_permutation_sums(z, labels, sigma)
    # float16 kernel values: ~5e-4 per entry, averaging out in sums over many entries
    np.testing.assert_allclose(q, q_ref, rtol=1e-3)
    np.testing.assert_allclose(r, r_ref, rtol=1e-3)
    stats, stats_ref = mmd2_from_sums(q, r, labels, n, m), mmd2_from_sums(q_ref, r_ref, labels, n, m)
    if n > 50:
        assert abs(stats[0] - stats_ref[0]) <= 2e-3 * abs(stats_ref[0])
        # the permutation ranks, hence the p-value, are what the test decides on
        assert np.count_nonzero(stats[1:] >= stats[0]) == np.count_nonzero(stats_ref[1:] >= stats_ref[0])


def test_labels_from_keys_picks_the_n_smallest_per_row():
    from llmops.drift.kernels.tiles import labels_from_keys

    uniform = np.random.default_rng(0).random((300, 13))
    labels = labels_from_keys(uniform, 5)
    assert labels.dtype == np.float16 and labels.shape == (300, 13)
    expected = np.zeros_like(uniform)
    np.put_along_axis(expected, np.argsort(uniform, axis=1)[:, :5], 1.0, axis=1)
    np.testing.assert_array_equal(labels, expected)
    # every row is one of C(13, 5) subsets; each row position is chosen with probability 5/13
    assert abs(labels.mean(axis=0) - 5 / 13).max() < 0.1
