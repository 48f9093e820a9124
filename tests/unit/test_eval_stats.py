"""The gate's statistics against independent references and by simulation."""

import numpy as np
import pytest
from scipy.stats import binomtest

from llmops.evaluation.stats import holm_adjust, mcnemar_exact, paired_bootstrap


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_mcnemar_matches_scipy_binomtest(seed, alternative):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    candidate = rng.random(n) < rng.uniform(0.2, 0.9)
    baseline = rng.random(n) < rng.uniform(0.2, 0.9)
    b, c, p = mcnemar_exact(candidate, baseline, alternative)
    assert b == np.sum(candidate & ~baseline) and c == np.sum(~candidate & baseline)
    expected = binomtest(b, b + c, 0.5, alternative=alternative).pvalue if b + c else 1.0
    assert p == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_holm_matches_the_textbook_example():
    # Holm (1979)-style example: sorted p 0.01, 0.02, 0.03, 0.04 with m = 4
    assert holm_adjust([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])


def test_bootstrap_interval_covers_the_true_difference_at_its_nominal_level():
    rng = np.random.default_rng(1)
    true_delta, hits, trials = 0.1, 0, 400
    for trial in range(trials):
        base = rng.normal(0.5, 0.2, 60)
        cand = base + true_delta + rng.normal(0, 0.15, 60)  # paired, correlated scores
        result = paired_bootstrap(cand, base, alpha=0.05, iterations=1000, seed=trial)
        hits += result.low <= true_delta <= result.high
    coverage = hits / trials
    assert 0.86 <= coverage <= 0.94, coverage  # nominal 0.90 (two one-sided 95% bounds)


def test_bootstrap_pvalue_rejects_at_about_alpha_when_on_the_margin():
    rng = np.random.default_rng(2)
    rejections, trials = 0, 400
    for trial in range(trials):
        base = rng.random(100)
        cand = base - 0.05 + rng.normal(0, 0.2, 100)  # true difference exactly at -margin
        rejections += paired_bootstrap(cand, base, margin=0.05, iterations=1000, seed=trial).p_below_margin < 0.05
    assert 0.02 <= rejections / trials <= 0.09


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="same, non-zero number"):
        paired_bootstrap(np.ones(3), np.ones(4))
