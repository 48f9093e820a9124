"""Paired statistics for the promotion gate: exact McNemar and Holm (intervals live in `intervals`).

Candidate and baseline are scored on the same items, so the gate works on per-item differences
d_i = candidate_i - baseline_i. Pairing removes the between-item variance that an unpaired test
(lm-eval's z-test) leaves in, which is what makes small suites decisive.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mcnemar_exact", "holm_adjust", "is_binary"]


def mcnemar_exact(candidate: np.ndarray, baseline: np.ndarray, alternative: str = "two-sided") -> tuple[int, int, float]:
    """Exact McNemar test on paired 0/1 scores.

    Returns (b, c, p): b items only the candidate got right, c items only the baseline got right,
    and the exact binomial p-value of b among b + c discordant pairs at 1/2. `alternative="less"`
    tests whether the candidate is worse (b smaller than c).
    """
    candidate = np.asarray(candidate) > 0.5
    baseline = np.asarray(baseline) > 0.5
    b = int(np.count_nonzero(candidate & ~baseline))
    c = int(np.count_nonzero(~candidate & baseline))
    n = b + c
    if n == 0:
        return b, c, 1.0
    from scipy.stats import binom

    if alternative == "less":
        p = binom.cdf(b, n, 0.5)
    elif alternative == "greater":
        p = binom.sf(b - 1, n, 0.5)
    else:
        p = min(1.0, 2 * min(binom.cdf(b, n, 0.5), binom.sf(b - 1, n, 0.5)))
    return b, c, float(p)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def is_binary(*arrays: np.ndarray) -> bool:
    """True when every value is 0 or 1 (then McNemar applies)."""
    return all(np.isin(np.asarray(a, dtype=float), (0.0, 1.0)).all() for a in arrays)
