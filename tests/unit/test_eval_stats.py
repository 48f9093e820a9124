"""The gate's exact McNemar and Holm against independent references."""

import numpy as np
import pytest
from scipy.stats import binomtest

from llmops.evaluation.stats import holm_adjust, mcnemar_exact


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
