"""Confidence intervals for the mean paired difference that keep their level at small n.

The gate compares candidate and baseline on the same items through d_i = candidate_i - baseline_i.
`alpha` is per side: the interval [low, high] is two-sided at level 1 - 2*alpha (90% for the
default 0.05), so each bound alone is a one-sided (1 - alpha) bound and each gate decision
(`low > -margin` passes, `high < -margin` fails) errs at most alpha of the time.

A percentile bootstrap does not keep that promise when few items differ: with no item lost by the
candidate every resampled mean is >= 0, the lower bound collapses to 0 and a true 8.5%-loss /
1.5%-win candidate passed 18% of simulated 20-item promotions instead of 5% (issue 14). Three
methods replace it, chosen by the data:

- **0/1 scores: Tango's score interval** (Tango 1998, Stat. Med. 17:891-908). It inverts the score
  test of H0: p_b - p_c = d0 on the discordant counts b (candidate only right) and c (baseline only
  right), with the variance taken at the restricted maximum-likelihood estimate under H0, not at
  the observed counts; so 0 lost items still leave a variance and the bound widens as it should.
  Its exact size, enumerated over every outcome of the trinomial, reaches 0.0557 for alpha 0.05 at
  n = 50, so up to 400 items each bound's level is recalibrated by that enumeration
  (`tango_exact`) until the exact size is <= alpha (tests/unit/test_eval_intervals.py).
- **Other scores in [0, 1]: a betting confidence bound** (Waudby-Smith & Ramdas 2023, JRSS-B 86:1,
  "Estimating means of bounded random variables by betting"). The capital
  K(m) = prod_i (1 + lambda_i (x_i - m)) of a bettor who wagers that the mean exceeds m is a
  non-negative supermartingale when it does not, so P(K(m) >= 1/alpha) <= alpha by Markov's (Ville's)
  inequality: a finite-sample guarantee for *any* distribution on the bounded range, skewed or
  degenerate (all d_i >= 0 included), with no asymptotics. The capital is averaged over a few seeded
  item orders (an average of such capitals keeps the guarantee), so the bound does not depend on
  the order of the suite's items.
- **Unbounded raw measurements** (latency, token counts): no test of a mean keeps its level over all
  distributions (Bahadur & Savage 1956), so these get Student's t with the variance floored at that
  of one item moving by the observed range (else identical answers give a zero-width interval), and
  the method name says it is approximate. Gate them with hard limits instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedInterval", "paired_interval", "tango_z", "tango_bounds", "betting_bounds", "UNIT_RANGE"]

UNIT_RANGE = (0.0, 1.0)
"""Scores inside this range (every quality scorer) get a finite-sample guarantee."""

_BISECTION_STEPS = 60


@dataclass(frozen=True)
class PairedInterval:
    """The mean paired difference, its interval at level 1 - 2*alpha, and both one-sided p-values."""

    mean: float
    low: float
    high: float
    level: float
    method: str
    """tango-score (0/1 scores), betting (scores in [0, 1]) or student-t-approx (unbounded scores)."""
    p_not_worse: float
    """p-value of H0 "delta <= -margin": small means the candidate is not worse beyond the margin."""
    p_worse: float
    """p-value of H0 "delta >= -margin": small means the candidate is worse beyond the margin."""
    items: int
    discordant: int
    """Items where the two scores differ."""


def tango_z(b: np.ndarray, c: np.ndarray, n: np.ndarray, d0: np.ndarray) -> np.ndarray:
    """Tango's score statistic for H0: p_b - p_c = d0 (arrays broadcast).

    Z = (b - c - n d0) / sqrt(n (2 q + d0 (1 - d0))), with q the restricted MLE of p_c under H0:
    q = (sqrt(B^2 - 4AC) - B) / 2A, A = 2n, B = -b - c + (2n - b + c) d0, C = -c d0 (1 - d0).
    Z is 0 where the variance is 0 (b = c = 0 at d0 = 0: no evidence either way).
    """
    b, c, n, d0 = (np.asarray(x, dtype=float) for x in (b, c, n, d0))
    a_coef = 2 * n
    b_coef = -b - c + (2 * n - b + c) * d0
    c_coef = -c * d0 * (1 - d0)
    q = (np.sqrt(np.maximum(b_coef**2 - 4 * a_coef * c_coef, 0.0)) - b_coef) / (2 * a_coef)
    variance = n * (2 * q + d0 * (1 - d0))
    numerator = b - c - n * d0
    safe = variance > 1e-300
    return np.where(safe, numerator / np.sqrt(np.where(safe, variance, 1.0)), 0.0)


def tango_bounds(b, c, n, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper one-sided (1 - alpha) bounds of p_b - p_c by inverting Tango's test (vectorised).

    Z decreases in d0, so each bound is found by bisection: low solves Z(d0) = z_{1-alpha} on
    [-1, estimate], high solves Z(d0) = -z_{1-alpha} on [estimate, 1].
    """
    from scipy.stats import norm

    b, c, n = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (b, c, n)))
    z = norm.ppf(1 - alpha)
    estimate = (b - c) / n
    bounds = []
    for target, lo, hi in ((z, -np.ones_like(b), estimate.copy()), (-z, estimate.copy(), np.ones_like(b))):
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            above = tango_z(b, c, n, mid) >= target
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        bounds.append(lo if target > 0 else hi)
    return bounds[0], bounds[1]


class _Bettor:
    """The order-averaged capital of a bettor who wagers that mean(x) > m, for x in [0, 1].

    Each item bets with the mean and variance of the items before it (the predictable plug-in of
    Waudby-Smith & Ramdas 2023, eq. 26, for a fixed n), so each factor 1 + lambda_i (x_i - m) has
    expectation <= 1 when mean(x) <= m. Every factor decreases in m (also where the bet is truncated
    at 3/4 of the largest fair bet 1/m, which keeps each factor >= 1/4; they suggest 1/2 to 3/4), so
    the capital does too and the set of rejected m is an interval [0, bound) found by bisection.
    """

    def __init__(self, x: np.ndarray, alpha: float, orders: int, seed: int):
        n = len(x)
        rng = np.random.default_rng(seed)
        self.x = np.stack([x] + [rng.permutation(x) for _ in range(orders - 1)])  # (orders, n)
        seen = np.arange(1, n + 1)
        mean_after = (0.5 + np.cumsum(self.x, axis=1)) / (seen + 1)
        mean_before = np.concatenate([np.full((orders, 1), 0.5), mean_after[:, :-1]], axis=1)
        spread = np.cumsum((self.x - mean_before) ** 2, axis=1)
        var_before = np.concatenate([np.full((orders, 1), 0.25), ((0.25 + spread) / (seen + 1))[:, :-1]], axis=1)
        self.bets = np.sqrt(2 * np.log(1 / alpha) / (n * var_before))
        self.threshold = np.log(1 / alpha)

    def log_capital(self, m: float) -> float:
        lam = np.minimum(self.bets, 0.75 / max(m, 1e-12))
        per_order = np.log1p(lam * (self.x - m)).sum(axis=1)
        top = per_order.max()
        return float(top + np.log(np.mean(np.exp(per_order - top))))

    def lower_bound(self) -> float:
        """The largest m still rejected (capital >= 1/alpha): a one-sided (1 - alpha) lower bound."""
        if self.log_capital(0.0) < self.threshold:
            return 0.0
        lo, hi = 0.0, 1.0
        for _ in range(20):  # 2**-20: far below any margin
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.log_capital(mid) >= self.threshold else (lo, mid)
        return lo  # rejected, so at or below the true bound: rounding errs on the safe side


def betting_bounds(d: np.ndarray, alpha: float, margin: float, orders: int = 16, seed: int = 0) -> tuple[float, float, float, float]:
    """(low, high, p_not_worse, p_worse) for the mean of d in [-1, 1] by betting (see the module doc)."""
    x = (np.clip(d, -1, 1) + 1) / 2
    up, down = _Bettor(x, alpha, orders, seed), _Bettor(1 - x, alpha, orders, seed)
    at = (1 - margin) / 2  # delta = -margin in x units
    p_not_worse = float(min(1.0, np.exp(-up.log_capital(at))))
    p_worse = float(min(1.0, np.exp(-down.log_capital(1 - at))))
    return 2 * up.lower_bound() - 1, 1 - 2 * down.lower_bound(), p_not_worse, p_worse


def _student_t(d: np.ndarray, alpha: float, margin: float, spread: float) -> tuple[float, float, float, float]:
    from scipy.stats import t

    n = len(d)
    variance = max(float(np.var(d, ddof=1)) if n > 1 else 0.0, spread**2 / n)
    se = np.sqrt(variance / n) if variance > 0 else 1e-12
    quantile = t.ppf(1 - alpha, max(n - 1, 1))
    mean = float(d.mean())
    statistic = (mean + margin) / se
    return mean - quantile * se, mean + quantile * se, float(t.sf(statistic, max(n - 1, 1))), float(t.cdf(statistic, max(n - 1, 1)))


def paired_interval(candidate, baseline, alpha: float = 0.05, margin: float = 0.0, seed: int = 0,
                    bounded: bool = True) -> PairedInterval:
    """The interval of mean(candidate - baseline) at level 1 - 2*alpha, by the method the scores allow.

    `bounded=False` says the scores are raw measurements that may leave [0, 1] (latency, tokens) even
    where this sample stays inside it; they get the approximate t interval.

    Raises:
        ValueError: the arrays differ in length, are empty, or alpha is not in (0, 0.5).
    """
    candidate = np.asarray(candidate, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    if candidate.shape != baseline.shape or candidate.ndim != 1 or len(candidate) == 0:
        raise ValueError("candidate and baseline need the same, non-zero number of paired items")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) (it is per side), not {alpha}")
    d = candidate - baseline
    n, discordant = len(d), int(np.count_nonzero(d))
    if bounded and np.isin(candidate, (0.0, 1.0)).all() and np.isin(baseline, (0.0, 1.0)).all():
        from scipy.stats import norm

        from llmops.evaluation.tango_exact import exact_alpha

        b, c = int(np.count_nonzero(d > 0)), int(np.count_nonzero(d < 0))
        # each bound at the level that makes its margin test exact (tango_exact): never narrower than Tango's
        low = float(tango_bounds(b, c, n, exact_alpha(n, -margin, alpha, +1))[0])
        high = float(tango_bounds(b, c, n, exact_alpha(n, -margin, alpha, -1))[1])
        z = float(tango_z(b, c, n, -margin))
        return PairedInterval(float(d.mean()), low, high, 1 - 2 * alpha, "tango-score",
                              float(norm.sf(z)), float(norm.cdf(z)), n, discordant)
    lo, hi = UNIT_RANGE
    if bounded and candidate.min() >= lo and baseline.min() >= lo and candidate.max() <= hi and baseline.max() <= hi:
        low, high, p_not_worse, p_worse = betting_bounds(d, alpha, margin, seed=seed)
        method = "betting"
    else:
        spread = float(max(candidate.max(), baseline.max()) - min(candidate.min(), baseline.min()))
        low, high, p_not_worse, p_worse = _student_t(d, alpha, margin, spread)
        method = "student-t-approx"
    return PairedInterval(float(d.mean()), float(low), float(high), 1 - 2 * alpha, method, p_not_worse, p_worse, n, discordant)
