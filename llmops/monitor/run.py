"""One monitoring cycle: check each configured trigger; if any fires, fine-tune, evaluate and promote.

Every cycle is an MLflow run in the experiment `llmops-monitor`, tagged with the decision and each
trigger's reason, so "why did (or didn't) we retrain?" has an answer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from llmops.errors import LlmopsError
from llmops.monitor.config import MonitorConfig

__all__ = ["TriggerCheck", "Decision", "run_monitor_once", "MONITOR_EXPERIMENT"]

MONITOR_EXPERIMENT = "llmops-monitor"


@dataclass
class TriggerCheck:
    """One trigger's verdict and why."""

    name: str
    fired: bool
    reason: str
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class Decision:
    """What one cycle decided and did."""

    checks: list[TriggerCheck]
    dry_run: bool
    version: Optional[str] = None
    verdict: Optional[str] = None
    promoted: bool = False
    run_id: Optional[str] = None

    @property
    def fired(self) -> list[str]:
        """Names of the triggers that fired."""
        return [c.name for c in self.checks if c.fired]


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(path)  # atomic: a crash never leaves half a state file


def _count_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def _last_finetune(config: MonitorConfig, state: dict[str, Any]) -> Optional[datetime]:
    if state.get("last_finetune"):
        return datetime.fromisoformat(state["last_finetune"])
    from llmops.errors import NotFoundError
    from llmops.registry import resolve_model_ref

    try:
        return resolve_model_ref(f"{config.model}@{config.alias}").created
    except NotFoundError:
        return None


def _check_new_data(config: MonitorConfig, state: dict[str, Any], now: datetime) -> TriggerCheck:
    trigger = config.triggers.new_data
    rows = _count_rows(trigger.path)
    baseline = state.setdefault("data_rows", rows)  # first cycle: today's data is the baseline
    new = rows - baseline
    fired = new >= trigger.min_new_rows
    return TriggerCheck("new_data", fired, f"{new} new rows since the last fine-tune (threshold {trigger.min_new_rows})",
                        {"new_rows": float(new)})


def _check_quality(config: MonitorConfig, state: dict[str, Any], now: datetime) -> TriggerCheck:
    from llmops.evaluation.runner import load_suite, run_suite

    trigger = config.triggers.quality
    result = run_suite(load_suite(trigger.suite), f"{config.model}@{config.alias}", progress=False)
    if trigger.scorer not in result.summaries:
        raise LlmopsError(f"triggers.quality.scorer: the suite has no scorer {trigger.scorer!r}")
    mean = result.summaries[trigger.scorer].mean
    fired = mean is not None and mean < trigger.min
    return TriggerCheck("quality", fired, f"{trigger.scorer} = {mean} on {result.model_version} (floor {trigger.min})",
                        {"quality": float(mean) if mean is not None else float("nan")})


def _check_drift(config: MonitorConfig, state: dict[str, Any], now: datetime) -> TriggerCheck:
    from llmops.drift import DriftInputError, token_drift
    from llmops.drift.traffic import traffic_documents

    trigger = config.triggers.drift
    try:
        docs = traffic_documents(f"{config.model}@{config.alias}", trigger.reference, trigger.since,
                                 trigger.capture_dir, trigger.prompt)
    except DriftInputError as error:
        return TriggerCheck("drift", False, f"not judged: {error}")
    if docs.records < trigger.min_requests:
        return TriggerCheck("drift", False, f"only {docs.records} captured requests (needs {trigger.min_requests})",
                            {"requests": float(docs.records)})
    result = token_drift(docs.reference, docs.current, len(docs.tokenizer), alpha=trigger.alpha,
                         js_threshold=trigger.js_max, backend="cpu")
    reason = (f"token JS {result.js_divergence:.3f} bits, p={result.js_p_value} over {docs.records} requests "
              f"of {docs.model_version} (alpha {trigger.alpha})")
    return TriggerCheck("drift", bool(result.drift), reason,
                        {"js_divergence": result.js_divergence, "requests": float(docs.records)})


def _check_schedule(config: MonitorConfig, state: dict[str, Any], now: datetime) -> TriggerCheck:
    from llmops.monitor.cron import last_fire_time

    trigger = config.triggers.schedule
    due = last_fire_time(trigger.cron, now)
    last = _last_finetune(config, state)
    fired = due is not None and (last is None or due > last)
    return TriggerCheck("schedule", fired, f"cron {trigger.cron!r}: last due {due}, last fine-tune {last}")


_CHECKS = {"new_data": _check_new_data, "quality": _check_quality, "drift": _check_drift, "schedule": _check_schedule}


def _log(config: MonitorConfig, decision: Decision) -> str:
    from llmops.registry.store import configure, ensure_experiment, retry_locked

    client = configure()
    outcome = "dry-run" if decision.dry_run and decision.fired else ("fired" if decision.fired else "none")
    tags = {"llmops.monitor.model": config.model, "llmops.monitor.decision": outcome,
            "llmops.monitor.fired": ",".join(decision.fired) or "-"}
    tags.update({f"llmops.monitor.reason.{c.name}": c.reason[:4800] for c in decision.checks})
    if decision.version:
        tags.update({"llmops.monitor.version": decision.version, "llmops.monitor.verdict": str(decision.verdict),
                     "llmops.monitor.promoted": str(decision.promoted).lower()})
    run = retry_locked(client.create_run)(ensure_experiment(MONITOR_EXPERIMENT), run_name=f"monitor:{config.model}", tags=tags)
    for check in decision.checks:
        client.log_metric(run.info.run_id, f"{check.name}.fired", float(check.fired))
        for key, value in check.details.items():
            client.log_metric(run.info.run_id, f"{check.name}.{key}", value)
    client.log_dict(run.info.run_id, {"checks": [asdict(c) for c in decision.checks]}, "decision.json")
    retry_locked(client.set_terminated)(run.info.run_id)
    return run.info.run_id


def run_monitor_once(config: MonitorConfig, dry_run: bool = False, now: Optional[datetime] = None) -> Decision:
    """Check every configured trigger once; act when one fires (unless `dry_run`). Logs the decision."""
    now = now or datetime.now(timezone.utc)
    state = _load_state(config.state)
    checks = [check(config, state, now) for name, check in _CHECKS.items() if getattr(config.triggers, name)]
    decision = Decision(checks, dry_run)
    if decision.fired and not dry_run:
        from llmops.evaluation.promote import promote
        from llmops.finetune.job import run_finetune

        result = run_finetune(config.finetune)
        decision.version = result.version
        if result.version:
            outcome = promote(config.model, int(result.version.rsplit("/", 1)[1]), config.alias, config.suite)
            decision.verdict, decision.promoted = outcome.verdict.verdict, outcome.moved
        state["last_finetune"] = now.isoformat()
        if config.triggers.new_data:
            state["data_rows"] = _count_rows(config.triggers.new_data.path)
    decision.run_id = _log(config, decision)
    if not dry_run:
        _save_state(config.state, state)
    return decision
