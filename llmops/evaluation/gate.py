"""The promotion gate: candidate against baseline, item by item, with a non-inferiority margin.

`alpha` is per side: the reported interval of the mean paired difference is two-sided at level
1 - 2*alpha (90% for the default 0.05) and each decision below errs at most alpha of the time.
The interval comes from `intervals.paired_interval` (Tango's score interval for 0/1 scores, a
betting bound for other scores in [0, 1]), which keeps that level when few items differ.

Verdicts:
- `pass`: the one-sided (1 - alpha) lower bound of the mean paired difference is above -margin,
  every tested slice shows no significant regression (Holm-corrected), and every hard limit holds;
- `fail`: the upper bound is below -margin, a slice regresses significantly, or a hard limit is broken;
- `investigate`: anything in between: the interval straddles the margin, or too few items.
With no baseline, only the absolute limits (`min_score`, hard min/max) apply. Slices are tested
on the items that carry the slice field; items without it are counted in the report, and tested
as a slice of their own only when the suite sets `gate.slices.test_missing`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from llmops.evaluation.comparison import paired_scores, scorer_interval
from llmops.evaluation.results import EvalResult
from llmops.evaluation.stats import holm_adjust, is_binary, mcnemar_exact
from llmops.evaluation.suite import GateConfig

__all__ = ["GateVerdict", "apply_gate", "EXIT_CODES"]

EXIT_CODES = {"pass": 0, "fail": 1, "investigate": 2}


@dataclass
class GateVerdict:
    """The decision and the numbers that made it."""

    verdict: str
    reasons: list[str]
    primary: str
    items: int
    candidate_mean: Optional[float] = None
    baseline_mean: Optional[float] = None
    delta: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    margin: float = 0.0
    alpha: float = 0.05
    """Error rate of each one-sided decision; the interval is two-sided at 1 - 2*alpha."""
    level: Optional[float] = None
    method: Optional[str] = None
    """How the interval was computed: tango-score, betting or student-t-approx."""
    mcnemar: Optional[dict[str, Any]] = None
    slices: list[dict[str, Any]] = field(default_factory=list)
    hard: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hard_limits(config: GateConfig, candidate: EvalResult, baseline: Optional[EvalResult]) -> list[dict[str, Any]]:
    checks = []
    for limit in config.hard:
        summary = candidate.summaries[limit.scorer]
        if limit.min is not None:
            ok = summary.mean is not None and summary.mean >= limit.min
            checks.append({"scorer": limit.scorer, "rule": f"mean >= {limit.min}", "value": summary.mean, "ok": ok})
        if limit.max is not None:
            ok = summary.mean is not None and summary.mean <= limit.max
            checks.append({"scorer": limit.scorer, "rule": f"mean <= {limit.max}", "value": summary.mean, "ok": ok})
        if limit.p95_max_ratio is not None and baseline is not None:
            base = baseline.summaries[limit.scorer].p95
            value = summary.p95 / base if summary.p95 is not None and base else None
            ok = value is not None and value <= limit.p95_max_ratio
            checks.append({"scorer": limit.scorer, "rule": f"p95 <= {limit.p95_max_ratio}x baseline", "value": value, "ok": ok})
    if config.min_score is not None:
        mean = candidate.summaries[config.primary].mean
        checks.append({"scorer": config.primary, "rule": f"mean >= {config.min_score}", "value": mean,
                       "ok": mean is not None and mean >= config.min_score})
    return checks


def _slice_checks(config: GateConfig, candidate: EvalResult, baseline: EvalResult) -> list[dict[str, Any]]:
    if config.slices is None:
        return []
    margin = config.slices.margin if config.slices.margin is not None else config.margin
    tested = []
    for item_field in sorted({k for item in candidate.items for k in item.slices}):
        for value in sorted({item.slices.get(item_field) for item in candidate.items}, key=str):
            keep = {i.item_id for i in candidate.items if i.slices.get(item_field) == value}
            ids, cand, base = paired_scores(candidate, baseline, config.primary, keep)
            label = f"{item_field}={value}" if value is not None else f"{item_field} missing"
            entry: dict[str, Any] = {"slice": label, "items": len(ids), "tested": False}
            if value is None and not config.slices.test_missing:
                entry["note"] = "items without the field: reported, not tested (set gate.slices.test_missing)"
            elif len(ids) < config.slices.min_items:
                entry["note"] = f"fewer than {config.slices.min_items} items: reported, not tested"
            else:
                interval = scorer_interval(candidate, baseline, config.primary, config.alpha, margin, config.seed, keep)
                entry.update(tested=True, delta=interval.mean, ci_low=interval.low, ci_high=interval.high,
                             method=interval.method, p=interval.p_worse)
            tested.append(entry)
    with_p = [e for e in tested if "p" in e]
    for entry, adjusted in zip(with_p, holm_adjust([e["p"] for e in with_p])):
        entry["p_holm"] = adjusted
        entry["regressed"] = adjusted < config.alpha
    return tested


def apply_gate(config: GateConfig, candidate: EvalResult, baseline: Optional[EvalResult]) -> GateVerdict:
    """Decide pass / fail / investigate for `candidate` against `baseline` (None: no baseline yet)."""
    hard = _hard_limits(config, candidate, baseline)
    broken = [f"{c['scorer']}: {c['rule']} does not hold (value {c['value']})" for c in hard if not c["ok"]]
    candidate_mean = candidate.summaries[config.primary].mean
    if baseline is None:
        verdict = "fail" if broken else "pass"
        reasons = broken or ["no baseline holds the alias yet: only absolute limits apply, and they hold"]
        return GateVerdict(verdict, reasons, config.primary, len(candidate.items), candidate_mean, hard=hard,
                           margin=config.margin, alpha=config.alpha)

    ids, cand, base = paired_scores(candidate, baseline, config.primary)
    result = GateVerdict("investigate", [], config.primary, len(ids), candidate_mean,
                         baseline.summaries[config.primary].mean, margin=config.margin, alpha=config.alpha, hard=hard)
    if len(ids) < config.min_items:
        result.reasons.append(f"only {len(ids)} paired items (the gate needs {config.min_items})")
        result.verdict = "fail" if broken else "investigate"
        result.reasons += broken
        return result
    interval = scorer_interval(candidate, baseline, config.primary, config.alpha, config.margin, config.seed)
    result.delta, result.ci_low, result.ci_high = interval.mean, interval.low, interval.high
    result.level, result.method = interval.level, interval.method
    worse_beyond_margin = interval.high < -config.margin
    if is_binary(cand, base):
        b, c, p = mcnemar_exact(cand, base, alternative="less")
        result.mcnemar = {"candidate_only": b, "baseline_only": c, "p_candidate_worse": p}
    result.slices = _slice_checks(config, candidate, baseline)
    regressed = [s["slice"] for s in result.slices if s.get("regressed")]
    described = (f"delta {interval.mean:+.3f}, {interval.level:.0%} CI [{interval.low:+.3f}, {interval.high:+.3f}] "
                 f"({interval.method}, {interval.discordant} of {interval.items} items differ), margin {config.margin}")
    if broken or regressed or worse_beyond_margin:
        result.verdict = "fail"
        result.reasons += broken + [f"slice {s} regressed (Holm-corrected p < {config.alpha})" for s in regressed]
        if worse_beyond_margin:
            result.reasons.append(f"candidate is worse than the baseline beyond the margin: {described}")
    elif interval.low > -config.margin:
        result.verdict = "pass"
        result.reasons.append(f"candidate is not worse than the baseline: {described}")
    else:
        result.reasons.append(f"the interval straddles the margin: {described}")
    return result
