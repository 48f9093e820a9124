"""The promotion gate's verdicts on synthetic paired results, and its false-fail rate by simulation.

The gate's level under a true regression at small n is in test_eval_intervals.py."""

import numpy as np
import pytest

from llmops.evaluation.gate import apply_gate
from llmops.evaluation.results import EvalResult, ItemResult, summarise
from llmops.evaluation.suite import GateConfig, HardLimit, SliceGate


def result(scores, slices=None, latency=None, name="m/1") -> EvalResult:
    items = []
    for index, score in enumerate(scores):
        item_scores = {"correct": float(score)}
        if latency is not None:
            item_scores["latency"] = float(latency[index])
        items.append(ItemResult(f"i{index}", f"h{index}", "p", {}, ["a"], item_scores,
                                {"group": slices[index]} if slices is not None else {}))
    keys = list(items[0].scores)
    summaries = {k: summarise(k, [i.scores[k] for i in items], k != "latency") for k in keys}
    return EvalResult("s", "1", name, name, None, items, summaries, {}, len(items), 0, 0.0)


def gate(**kwargs) -> GateConfig:
    return GateConfig(primary="correct", **kwargs)


def test_clearly_better_candidate_passes():
    rng = np.random.default_rng(0)
    base = rng.random(100) < 0.3
    verdict = apply_gate(gate(), result(base | (rng.random(100) < 0.6)), result(base))
    assert verdict.verdict == "pass" and verdict.delta > 0.3
    assert verdict.mcnemar["baseline_only"] == 0


def test_clearly_worse_candidate_fails_with_the_numbers():
    rng = np.random.default_rng(1)
    base = rng.random(100) < 0.9
    verdict = apply_gate(gate(), result(base & (rng.random(100) < 0.3)), result(base))
    assert verdict.verdict == "fail"
    assert verdict.ci_high < -0.02 and verdict.mcnemar["p_candidate_worse"] < 0.05
    assert "worse than the baseline beyond the margin" in verdict.reasons[-1]


def test_identical_answers_pass_only_when_enough_items_rule_out_the_margin():
    same = [1, 0, 1, 1] * 10
    verdict = apply_gate(gate(), result(same), result(same))
    # 0 of 40 items differ, yet a true 2% loss would show no lost item 44% of the time: not a pass
    assert verdict.verdict == "investigate" and "straddles the margin" in verdict.reasons[0]
    assert verdict.method == "tango-score" and verdict.ci_low < -0.02 and verdict.level == pytest.approx(0.9)
    assert apply_gate(gate(), result(same * 15), result(same * 15)).verdict == "pass"
    verdict = apply_gate(gate(min_items=50), result(same), result(same))
    assert verdict.verdict == "investigate" and "only 40 paired items" in verdict.reasons[0]


def test_straddling_the_margin_is_investigate():
    rng = np.random.default_rng(3)
    base = rng.random(40) < 0.6
    cand = base.copy()
    cand[:3] = ~cand[:3]  # a few flips either way: too uncertain to decide at 40 items
    assert apply_gate(gate(margin=0.01), result(cand), result(base)).verdict == "investigate"


def test_no_baseline_uses_absolute_limits_only():
    assert apply_gate(gate(min_score=0.5), result([1] * 30), None).verdict == "pass"
    verdict = apply_gate(gate(min_score=0.5), result([0] * 30), None)
    assert verdict.verdict == "fail" and "mean >= 0.5 does not hold" in verdict.reasons[0]


def test_hard_latency_limit_against_the_baseline():
    scores = [1] * 30
    config = gate(hard=[HardLimit(scorer="latency", p95_max_ratio=1.1)])
    verdict = apply_gate(config, result(scores, latency=[2.0] * 30), result(scores, latency=[1.0] * 30))
    assert verdict.verdict == "fail" and "latency: p95 <= 1.1x baseline" in verdict.reasons[0]


def test_a_regressed_slice_fails_even_when_the_mean_holds():
    groups = ["a"] * 80 + ["b"] * 30
    base = np.array([1] * 40 + [0] * 40 + [1] * 30)
    cand = np.array([1] * 80 + [0] * 30)  # much better on a, everything lost on b
    verdict = apply_gate(gate(slices=SliceGate(min_items=10)), result(cand, groups), result(base, groups))
    assert verdict.verdict == "fail"
    regressed = {s["slice"] for s in verdict.slices if s.get("regressed")}
    assert regressed == {"group=b"}


def test_items_without_the_slice_field_are_reported_not_tested_unless_asked():
    groups = ["a"] * 40 + [None] * 30
    base = np.array([1] * 40 + [1] * 30)
    cand = np.array([1] * 40 + [0] * 30)  # everything lost on the items that lack the field
    verdict = apply_gate(gate(slices=SliceGate(min_items=10)), result(cand, groups), result(base, groups))
    missing = next(s for s in verdict.slices if s["slice"] == "group missing")
    assert missing["items"] == 30 and not missing["tested"] and "not tested" in missing["note"]
    assert not any(s.get("regressed") for s in verdict.slices)
    asked = apply_gate(gate(slices=SliceGate(min_items=10, test_missing=True)), result(cand, groups), result(base, groups))
    assert {s["slice"] for s in asked.slices if s.get("regressed")} == {"group missing"}


@pytest.mark.parametrize("binary", [True, False])
def test_false_fail_rate_is_near_alpha_when_candidate_and_baseline_are_the_same_model(binary):
    rng = np.random.default_rng(7)
    trials, fails, n = 300, 0, 120
    for trial in range(trials):
        difficulty = rng.random(n)
        if binary:  # the same model sampled twice: per-item success probability, independent draws
            cand, base = rng.random(n) < difficulty, rng.random(n) < difficulty
        else:
            cand, base = difficulty + rng.normal(0, 0.2, n), difficulty + rng.normal(0, 0.2, n)
        config = GateConfig(primary="correct", margin=0.0, alpha=0.05, seed=trial)
        fails += apply_gate(config, result(cand), result(base)).verdict == "fail"
    assert 0.015 <= fails / trials <= 0.09, fails / trials
