"""Candidate against baseline, scorer by scorer and slice by slice: the numbers the gate and the report share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from llmops.evaluation.intervals import PairedInterval, paired_interval
from llmops.evaluation.results import EvalResult, ItemResult, ScorerSummary

__all__ = ["ScorerComparison", "paired_scores", "scorer_interval", "compare_scorers", "compare_slices", "items_disagreeing_first"]


@dataclass
class ScorerComparison:
    """One scorer: each run's summary and, with a baseline, the paired difference and its interval."""

    scorer: str
    candidate: ScorerSummary
    baseline: Optional[ScorerSummary]
    paired: Optional[PairedInterval]


def paired_scores(candidate: EvalResult, baseline: EvalResult, scorer: str,
                  keep: Optional[set[str]] = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Item ids measured in both runs (optionally only those in `keep`) and their two score arrays."""
    cand, base = candidate.scores(scorer), baseline.scores(scorer)
    ids = [i for i in cand if i in base and cand[i] is not None and base[i] is not None and (keep is None or i in keep)]
    return ids, np.array([cand[i] for i in ids], float), np.array([base[i] for i in ids], float)


def scorer_interval(candidate: EvalResult, baseline: EvalResult, scorer: str, alpha: float, margin: float = 0.0,
                    seed: int = 0, keep: Optional[set[str]] = None) -> Optional[PairedInterval]:
    """The paired interval of one scorer over the items both runs measured (None when there are none).

    Raw measurements (latency, tokens) are treated as unbounded whatever values this run saw.
    """
    ids, cand, base = paired_scores(candidate, baseline, scorer, keep)
    bounded = candidate.summaries[scorer].quality if scorer in candidate.summaries else True
    return paired_interval(cand, base, alpha, margin, seed, bounded=bounded) if ids else None


def compare_scorers(candidate: EvalResult, baseline: Optional[EvalResult], alpha: float = 0.05,
                    margin: float = 0.0, seed: int = 0) -> list[ScorerComparison]:
    """Every scorer of the candidate, with the baseline's summary and the paired interval when there is one."""
    rows = []
    for key, summary in candidate.summaries.items():
        other = baseline.summaries.get(key) if baseline is not None else None
        paired = scorer_interval(candidate, baseline, key, alpha, margin, seed) if other is not None else None
        rows.append(ScorerComparison(key, summary, other, paired))
    return rows


def compare_slices(candidate: EvalResult, baseline: Optional[EvalResult], scorer: str, alpha: float = 0.05,
                   margin: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """One row per slice value of each slice field: n, both means, the paired interval on `scorer`."""
    rows = []
    for field_name in sorted({k for item in candidate.items for k in item.slices}):
        for value in sorted({item.slices.get(field_name) for item in candidate.items}, key=str):
            keep = {i.item_id for i in candidate.items if i.slices.get(field_name) == value}
            label = f"{field_name}={value}" if value is not None else f"{field_name} missing"
            cand = [s for i, s in candidate.scores(scorer).items() if i in keep and s is not None]
            row: dict[str, Any] = {"slice": label, "items": len(keep),
                                   "candidate": float(np.mean(cand)) if cand else None, "baseline": None, "paired": None}
            if baseline is not None:
                base = [s for i, s in baseline.scores(scorer).items() if i in keep and s is not None]
                row["baseline"] = float(np.mean(base)) if base else None
                row["paired"] = scorer_interval(candidate, baseline, scorer, alpha, margin, seed, keep)
            rows.append(row)
    return rows


def items_disagreeing_first(candidate: EvalResult, baseline: Optional[EvalResult],
                            scorers: list[str]) -> list[tuple[ItemResult, Optional[ItemResult], bool]]:
    """(candidate item, baseline item, disagree) with the items whose scores differ on any of `scorers` first."""
    base_items = {i.item_id: i for i in baseline.items} if baseline is not None else {}
    rows = []
    for item in candidate.items:
        other = base_items.get(item.item_id)
        disagree = other is not None and any(item.scores.get(k) != other.scores.get(k) for k in scorers)
        rows.append((item, other, disagree))
    return sorted(rows, key=lambda row: not row[2])  # stable: suite order within each group
