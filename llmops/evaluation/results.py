"""What a suite run produces: per-item results, per-scorer summaries, and the run as a whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

__all__ = ["ItemResult", "ScorerSummary", "EvalResult", "summarise"]


@dataclass
class ItemResult:
    """One item: its hashes, answers (one per repeat) and per-scorer scores averaged over repeats."""

    item_id: str
    item_hash: str
    prompt_hash: str
    row: dict[str, Any]
    answers: list[str]
    scores: dict[str, Optional[float]]
    slices: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    request_ids: list[str] = field(default_factory=list)
    """The `x-request-id` of each repeat's generation (the gateway's trace has it as client_request_id)."""
    expected: dict[str, str] = field(default_factory=dict)
    """Each reference scorer's expected answer, rendered from the row."""


@dataclass
class ScorerSummary:
    """Aggregate of one scorer over the measured items."""

    name: str
    mean: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    measured: int
    unmeasured: int
    p50: Optional[float] = None
    p95: Optional[float] = None
    quality: bool = True
    """False for raw measurements (latency in seconds, output tokens), which are not in [0, 1]."""

    @property
    def unmeasured_rate(self) -> float:
        total = self.measured + self.unmeasured
        return self.unmeasured / total if total else 0.0


@dataclass
class EvalResult:
    """The outcome of one suite run on one model."""

    suite: str
    suite_version: str
    model_ref: str
    model_version: Optional[str]
    prompt_ref: Optional[str]
    items: list[ItemResult]
    summaries: dict[str, ScorerSummary]
    slices: dict[str, dict[str, dict[str, Optional[float]]]]
    generated: int
    cached: int
    seconds: float
    gateway: Optional[str] = None
    """The gateway URL the answers came from (None: the gateway code in-process)."""

    def scores(self, scorer: str) -> dict[str, Optional[float]]:
        """item_id -> score for one scorer."""
        return {item.item_id: item.scores.get(scorer) for item in self.items}

    def summary_dict(self) -> dict[str, Any]:
        """The JSON-ready summary (summary.json)."""
        return {
            "suite": self.suite,
            "suite_version": self.suite_version,
            "model": self.model_ref,
            "model_version": self.model_version,
            "prompt_version": self.prompt_ref,
            "items": len(self.items),
            "generated": self.generated,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "scorers": {
                k: {**{f: getattr(s, f) for f in ("mean", "ci_low", "ci_high", "measured", "unmeasured", "p50", "p95")},
                    "unmeasured_rate": s.unmeasured_rate}
                for k, s in self.summaries.items()
            },
            "slices": self.slices,
        }


def summarise(name: str, values: list[Optional[float]], quality: bool) -> ScorerSummary:
    """Mean with a 95% interval: Wilson's score interval for 0/1 scores (it stays inside [0, 1] and does
    not collapse at 0 or n successes), a percentile bootstrap otherwise; p50 and p95 for raw measurements."""
    measured = np.array([v for v in values if v is not None], dtype=float)
    unmeasured = len(values) - len(measured)
    if len(measured) == 0:
        return ScorerSummary(name, None, None, None, 0, unmeasured, quality=quality)
    mean, n = float(measured.mean()), len(measured)
    if np.isin(measured, (0.0, 1.0)).all():
        z = 1.959963984540054
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n))
        low, high = max(0.0, centre - half), min(1.0, centre + half)
    else:
        rng = np.random.default_rng(0)
        boot = measured[rng.integers(0, n, size=(2000, n))].mean(axis=1) if n > 1 else np.array([mean])
        low, high = (float(x) for x in np.quantile(boot, [0.025, 0.975]))
    p50, p95 = (float(x) for x in np.quantile(measured, [0.5, 0.95]))
    return ScorerSummary(name, mean, float(low), float(high), n, unmeasured, p50, p95, quality)
