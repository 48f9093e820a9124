"""The evidence behind a version's aliases: every recorded alias move, the eval runs a gated move
names (their metrics and verdict), and the suite's dataset (its digest and DVC pointer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llmops.lineage.state import dataset_state

__all__ = ["SUITE_DATA_PREFIX", "alias_moves", "with_eval_runs"]


SUITE_DATA_PREFIX = "llmops.data.suite"
"""Eval-run tags of the suite's dataset (`record.file_lineage_tags(path, SUITE_DATA_PREFIX)`), when recorded."""


def with_eval_runs(event: dict[str, Any]) -> dict[str, Any]:
    """An alias move with the metrics of the eval runs its evidence names, and the suite's dataset."""
    from llmops.lineage.runs import get_run_record

    runs, recorded_data = {}, {}
    evidence = event.get("evidence") or {}
    for role, run_id in (evidence.get("eval_runs") or {}).items():
        record = get_run_record(str(run_id))
        runs[role] = None if record is None else {
            "run_id": record.run_id, "status": record.status,
            "verdict": record.tags.get("llmops.gate.verdict"),
            "metrics": {k: v for k, v in record.metrics.items() if k.endswith((".mean", ".ci_low", ".ci_high"))},
        }
        if record is not None and not recorded_data:
            recorded_data = {k: v for k, v in record.tags.items() if k.startswith(SUITE_DATA_PREFIX + ".")}
    return {**event, "eval_runs": runs, "suite_data": _suite_data(evidence.get("suite_path"), recorded_data)}


def _suite_data(suite_path: Optional[str], recorded: dict[str, str]) -> Optional[dict[str, Any]]:
    """The suite's dataset: as the eval run recorded it (path, digest, DVC), else as the suite names it now."""
    import yaml

    from llmops.lineage.dvc import DvcDataset

    path = recorded.get(f"{SUITE_DATA_PREFIX}.path")
    if path is None and suite_path and Path(suite_path).is_file():
        try:
            dataset = (yaml.safe_load(Path(suite_path).read_text(encoding="utf-8")) or {}).get("dataset")
        except yaml.YAMLError:
            dataset = None
        if isinstance(dataset, str):
            path = str((Path(suite_path).parent / dataset).resolve())
    if path is None:
        return None
    digest = recorded.get(f"{SUITE_DATA_PREFIX}.digest")
    tracked = DvcDataset.from_tags(recorded, SUITE_DATA_PREFIX)
    if tracked is None and not recorded:
        from llmops.lineage.record import file_lineage_tags

        tracked = DvcDataset.from_tags(file_lineage_tags(path, SUITE_DATA_PREFIX), SUITE_DATA_PREFIX)
    entry = {"suite": suite_path, "path": path, "digest": digest, "recorded": bool(recorded),
             "dvc": vars(tracked) if tracked else None}
    state = dataset_state(path, digest)
    if digest is None:  # nothing recorded at eval time: show what the file holds now, without a verdict
        state.pop("state", None)
    return {**entry, **state}


def alias_moves(name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of model `name`, oldest first, as plain data."""
    from dataclasses import asdict

    from llmops.registry import alias_history

    return [asdict(event) for event in alias_history(name)]
