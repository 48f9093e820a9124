"""The gate's intervals keep their level at small n: exact enumeration, simulation, and references."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import gammaln

from llmops.evaluation.gate import apply_gate
from llmops.evaluation.intervals import paired_interval, tango_bounds, tango_z
from llmops.evaluation.suite import GateConfig
from llmops.evaluation.tango_exact import exact_alpha

MARGIN, ALPHA = 0.02, 0.05


def test_tango_restricted_mle_matches_numerical_maximum_likelihood():
    for b, c, n, d0 in [(3, 9, 40, -0.1), (0, 2, 20, -0.02), (5, 1, 50, 0.05), (0, 0, 30, -0.07)]:
        def negative_log_likelihood(pc):
            pb = pc + d0
            return -(b * np.log(pb) + c * np.log(pc) + (n - b - c) * np.log(1 - pb - pc))

        best = minimize_scalar(negative_log_likelihood, bounds=(max(0, -d0) + 1e-9, (1 - d0) / 2 - 1e-9),
                               method="bounded", options={"xatol": 1e-10}).x
        # the statistic's variance uses that MLE: recover it from Z and compare
        z = tango_z(b, c, n, d0)
        variance = (b - c - n * d0) ** 2 / z**2 if z else None
        if variance is not None:
            assert variance / n == pytest.approx(2 * best + d0 * (1 - d0), rel=1e-5)


def _outcomes(n):
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = b + c <= n
    return b[keep].astype(float), c[keep].astype(float)


def _probability(n, true_delta, discordance, side=+1, level=None):
    """Exact P(the gate passes) (side +1) or P(it fails) (side -1), summed over every (b, c) outcome."""
    pb, pc = (discordance + true_delta) / 2, (discordance - true_delta) / 2
    b, c = _outcomes(n)
    log_pmf = (gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(n - b - c + 1)
               + b * np.log(pb) + c * np.log(pc) + (n - b - c) * np.log1p(-pb - pc))
    alpha = level if level is not None else exact_alpha(n, -MARGIN, ALPHA, side)
    low, high = tango_bounds(b, c, n, alpha)
    decided = low > -MARGIN if side > 0 else high < -MARGIN
    return float(np.exp(log_pmf)[decided].sum())


@pytest.mark.parametrize("n", [20, 50, 100])
def test_exact_error_rates_at_the_margin_stay_at_alpha(n):
    # the worst case of H0 is its boundary, delta = -margin, at any share of discordant items
    grid = np.linspace(0.021, 0.99, 60)
    assert max(_probability(n, -MARGIN, d, +1) for d in grid) <= ALPHA  # a false pass
    assert max(_probability(n, -MARGIN, d, -1) for d in grid) <= ALPHA  # a false fail
    for discordance in (0.10, 0.25, 0.50):
        assert _probability(n, -(MARGIN + 0.05), discordance) <= ALPHA


def test_tango_alone_over_rejects_which_is_why_its_level_is_recalibrated():
    assert max(_probability(50, -MARGIN, d, +1, level=ALPHA) for d in np.linspace(0.021, 0.99, 60)) > 0.055


@pytest.mark.parametrize("n", [20, 50, 100])
@pytest.mark.parametrize("discordance", [0.10, 0.25, 0.50])
def test_simulated_promotions_under_a_true_regression_pass_at_most_alpha(n, discordance):
    """Issue 14: a candidate truly worse by margin + 0.05 is promoted at most alpha of the time."""
    rng = np.random.default_rng(int(n * 100 + discordance * 100))
    trials, true_delta = 4000, -(MARGIN + 0.05)
    p_win, p_loss = (discordance + true_delta) / 2, (discordance - true_delta) / 2
    counts = rng.multinomial(n, [p_win, p_loss, 1 - p_win - p_loss], size=trials)
    low, _ = tango_bounds(counts[:, 0], counts[:, 1], n, exact_alpha(n, -MARGIN, ALPHA, +1))  # as the gate does
    rate = float(np.mean(low > -MARGIN))
    assert rate <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / trials), rate


def test_the_gate_itself_refuses_the_issue_example():
    # 20 items, the candidate loses 8.5% and wins 1.5%: the old bootstrap passed 18% of these
    rng = np.random.default_rng(14)
    config = GateConfig(primary="correct", margin=MARGIN, alpha=ALPHA, min_items=20)
    passes = 0
    for _ in range(200):
        shared, u = (rng.random(20) < 0.7).astype(float), rng.random(20)
        cand = np.where(u < 0.085, 0.0, np.where(u < 0.10, 1.0, shared))
        base = np.where(u < 0.085, 1.0, np.where(u < 0.10, 0.0, shared))
        passes += apply_gate(config, _result(cand), _result(base)).verdict == "pass"
    assert passes / 200 <= ALPHA + 0.04


def test_no_lost_item_in_twenty_is_not_a_pass():
    # an exact bound with 0 of 20 items lost still allows a loss of up to 13.9%; the interval must say so
    for wins in (0, 1):
        cand, base = np.ones(20), np.ones(20)
        base[:wins] = 0.0
        interval = paired_interval(cand, base, ALPHA, MARGIN)
        assert interval.method == "tango-score" and interval.low < -MARGIN <= interval.mean


def test_identical_answers_need_enough_items_to_exclude_the_margin():
    same = np.array([1.0, 0.0] * 20)
    assert paired_interval(same, same, ALPHA, MARGIN).low < -MARGIN  # 40 items cannot rule out 2%
    many = np.array([1.0, 0.0] * 300)
    assert paired_interval(many, many, ALPHA, MARGIN).low > -MARGIN  # 600 can


@pytest.mark.parametrize("n", [20, 50])
def test_betting_bound_keeps_its_level_for_rare_large_losses(n):
    """Non-binary scores: skewed differences (a few big losses, no wins) that a bootstrap misses."""
    rng = np.random.default_rng(n)
    passes, trials = 0, 150
    for trial in range(trials):
        base = rng.uniform(0.4, 1.0, n)
        loss = rng.random(n) < 0.2
        cand = np.where(loss, base - 0.35, base)  # true mean delta -0.07 = -(margin + 0.05)
        passes += paired_interval(cand, base, ALPHA, MARGIN, seed=trial).low > -MARGIN
    assert passes / trials <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / trials)


def test_betting_interval_covers_the_true_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 400):
        hits = 0
        for trial in range(40):
            base = rng.random(n)
            cand = np.clip(base + 0.1 + rng.normal(0, 0.1, n), 0, 1)
            true = float(np.mean(np.clip(base + 0.1 + rng.normal(0, 0.1, (200, n)), 0, 1) - base))
            interval = paired_interval(cand, base, ALPHA, seed=trial)
            hits += interval.low <= true <= interval.high
            assert interval.method == "betting"
        widths.append(interval.high - interval.low)
        assert hits >= 36
    assert widths[1] < widths[0] / 2


def test_unbounded_scores_use_student_t_with_a_variance_floor():
    latency = np.full(30, 1.5)
    interval = paired_interval(latency, latency, ALPHA)
    assert interval.method == "student-t-approx" and interval.low < 0 < interval.high


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same, non-zero number"):
        paired_interval(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="alpha must be in"):
        paired_interval(np.ones(3), np.ones(3), alpha=0.5)


def _result(scores):
    from llmops.evaluation.results import EvalResult, ItemResult, summarise

    items = [ItemResult(f"i{i}", f"h{i}", "p", {}, ["a"], {"correct": float(s)}) for i, s in enumerate(scores)]
    summaries = {"correct": summarise("correct", [i.scores["correct"] for i in items], True)}
    return EvalResult("s", "1", "m/1", "m/1", None, items, summaries, {}, len(items), 0, 0.0)
