"""Token drift: histogram metrics against hand computations, the permutation test, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from llmops.drift import DriftInputError, js_divergence_bits, psi, token_drift
from llmops.drift.kernels import numpy_ref


class _CharTokenizer:
    unk_token_id = 0

    def decode(self, ids):
        return "".join(chr(ord("a") + i - 1) if i else "<unk>" for i in ids)


def test_js_divergence_bits_bounds_and_known_value():
    p = np.array([1.0, 0.0])
    q = np.array([0.0, 1.0])
    assert js_divergence_bits(p, q) == pytest.approx(1.0)  # disjoint supports: exactly one bit
    assert js_divergence_bits(p, p) == pytest.approx(0.0)
    a, b = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    mid = (a + b) / 2
    want = 0.5 * (a * np.log2(a / mid)).sum() + 0.5 * (b * np.log2(b / mid)).sum()
    assert js_divergence_bits(a, b) == pytest.approx(want)


def test_metrics_match_hand_computation():
    ref = [np.array([1, 1, 2, 3]), np.array([1, 2])]
    cur = [np.array([1, 3, 3, 3, 0]), np.array([4])]
    result = token_drift(ref, cur, vocab_size=6, tokenizer=_CharTokenizer(), permutations=0, backend="numpy")
    p = np.array([0, 3, 2, 1, 0, 0]) / 6
    q = np.array([1, 1, 0, 3, 1, 0]) / 6
    assert result.js_divergence == pytest.approx(float(js_divergence_bits(p, q)))
    floor_p, floor_q = np.maximum(p, 1e-6), np.maximum(q, 1e-6)
    assert result.psi == pytest.approx(((floor_q - floor_p) * np.log(floor_q / floor_p)).sum())
    assert result.unknown_rate_reference == 0.0 and result.unknown_rate_current == pytest.approx(1 / 6)
    assert result.unseen_rate == pytest.approx(2 / 6)  # ids 0 and 4 never occur in the reference
    assert result.over_represented[0] == {"id": 3, "text": "c", "reference_share": pytest.approx(1 / 6), "current_share": pytest.approx(3 / 6)}
    assert [row["id"] for row in result.under_represented] == [1, 2]  # a tie: lower id first
    from scipy import stats

    chi2, p_value, _, _ = stats.chi2_contingency(np.array([[0, 3, 2, 1, 0], [1, 1, 0, 3, 1]]), correction=False)
    assert result.chi2 == pytest.approx(chi2) and result.chi2_p_value == pytest.approx(p_value)
    ks = stats.ks_2samp([4, 2], [5, 1])
    assert result.length_ks == pytest.approx(ks.statistic) and result.length_p_value == pytest.approx(ks.pvalue)
    assert result.js_p_value is None and result.drift == (result.js_divergence >= 0.1)


def test_permutation_test_separates_same_and_shifted_distributions():
    rng = np.random.default_rng(0)
    vocab = 500
    base = rng.dirichlet(np.full(vocab, 0.3))
    shifted = rng.dirichlet(np.full(vocab, 0.3))
    docs = lambda probs, k: [rng.choice(vocab, size=rng.integers(5, 40), p=probs) for _ in range(k)]
    same = token_drift(docs(base, 150), docs(base, 150), vocab, permutations=199, seed=1)
    moved = token_drift(docs(base, 150), docs(0.5 * base + 0.5 * shifted, 150), vocab, permutations=199, seed=1)
    assert same.js_p_value > 0.05 and not same.drift
    assert moved.js_p_value == pytest.approx(1 / 200) and moved.drift
    assert moved.js_divergence > same.js_divergence and moved.js_null.shape == (199,)


def test_flat_ids_with_lengths_equal_document_lists():
    rng = np.random.default_rng(3)
    ref = [rng.integers(0, 50, size=n) for n in (3, 9, 4, 7)]
    cur = [rng.integers(0, 50, size=n) for n in (5, 2, 8)]
    as_docs = token_drift(ref, cur, 50, permutations=30, seed=2)
    as_flat = token_drift(np.concatenate(ref), np.concatenate(cur), 50, reference_lengths=[3, 9, 4, 7],
                          current_lengths=[5, 2, 8], permutations=30, seed=2)
    assert as_docs.to_dict() | {"seconds": 0} == as_flat.to_dict() | {"seconds": 0}


def test_histogram_twin_counts_every_id():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=12345)
    counts = numpy_ref.token_histogram(ids, 1003)
    assert counts.shape == (1003,) and counts.sum() == ids.size and counts[1000:].sum() == 0
    assert counts[int(ids[0])] == np.count_nonzero(ids == ids[0])


def test_bad_token_inputs_raise_clear_errors():
    with pytest.raises(DriftInputError, match=r"current token id 10 is outside the vocabulary \[0, 10\)"):
        token_drift(np.array([1, 2]), np.array([3, 10]), 10)
    with pytest.raises(DriftInputError, match=r"reference token id -1 is outside"):
        token_drift(np.array([-1, 2]), np.array([3]), 10)
    with pytest.raises(DriftInputError, match="reference token set is empty"):
        token_drift(np.array([], np.int64), np.array([3]), 10)
    with pytest.raises(DriftInputError, match="must be integers"):
        token_drift(np.array([1.5]), np.array([3]), 10)
    with pytest.raises(DriftInputError, match="lengths sum to 3 but there are 2"):
        token_drift(np.array([1, 2]), np.array([3]), 10, reference_lengths=[1, 2], current_lengths=[1])


def test_psi_is_zero_for_identical_counts():
    counts = np.array([5.0, 0.0, 3.0])
    assert psi(counts, counts) == 0.0
