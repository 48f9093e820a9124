"""Paired statistics for the promotion gate: bootstrap intervals, exact McNemar, Holm.

Candidate and baseline are scored on the same items, so the gate works on per-item differences
d_i = candidate_i - baseline_i. Pairing removes the between-item variance that an unpaired test
(lm-eval's z-test) leaves in, which is what makes small suites decisive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapResult", "paired_bootstrap", "mcnemar_exact", "holm_adjust", "is_binary"]

_CHUNK_ELEMENTS = 4_000_000  # bootstrap index matrices are built in chunks of about this many entries


@dataclass(frozen=True)
class BootstrapResult:
    """Mean paired difference with a percentile bootstrap interval and a one-sided p-value."""

    mean: float
    low: float
    high: float
    level: float
    p_below_margin: float
    """Bootstrap p-value of H0 "mean difference >= -margin" against "candidate is worse by more than the margin"."""
    iterations: int


def _bootstrap_means(diffs: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    n = len(diffs)
    means = np.empty(iterations)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, iterations, chunk):
        stop = min(iterations, start + chunk)
        index = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[index].mean(axis=1)
    return means


def paired_bootstrap(
    candidate: np.ndarray,
    baseline: np.ndarray,
    alpha: float = 0.05,
    margin: float = 0.0,
    iterations: int = 10_000,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile bootstrap of the mean of candidate - baseline over items.

    The interval is two-sided at level 1 - 2*alpha, so each bound is a one-sided (1 - alpha)
    confidence bound: `low > -margin` shows non-inferiority at level alpha.

    Raises:
        ValueError: the arrays differ in length or are empty.
    """
    candidate = np.asarray(candidate, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    if candidate.shape != baseline.shape or candidate.ndim != 1 or len(candidate) == 0:
        raise ValueError("candidate and baseline need the same, non-zero number of paired items")
    diffs = candidate - baseline
    means = _bootstrap_means(diffs, iterations, np.random.default_rng(seed))
    low, high = np.quantile(means, [alpha, 1 - alpha])
    p_below = (1 + np.count_nonzero(means >= -margin)) / (iterations + 1)
    return BootstrapResult(float(diffs.mean()), float(low), float(high), 1 - 2 * alpha, float(p_below), iterations)


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
