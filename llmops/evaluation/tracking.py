"""Evaluation results in MLflow: a run with metrics and the per-item table, evidence on the model version."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from llmops.evaluation.results import EvalResult

__all__ = ["log_eval_run", "EVAL_EXPERIMENT"]

EVAL_EXPERIMENT = "llmops-eval"


def log_eval_run(result: EvalResult, paths: Optional[dict[str, Path]] = None, role: str = "candidate",
                 gate: Optional[dict[str, Any]] = None) -> str:
    """Log one suite run; tag the model version with its means. Returns the MLflow run id."""
    from llmops.registry import tag_model_version
    from llmops.registry.store import configure, ensure_experiment, retry_locked

    client = configure()
    run = retry_locked(client.create_run)(
        ensure_experiment(EVAL_EXPERIMENT),
        run_name=f"{result.suite}:{result.model_version or result.model_ref}",
        tags={"llmops.suite": result.suite, "llmops.model_version": str(result.model_version or result.model_ref),
              "llmops.prompt_version": str(result.prompt_ref or "inline"), "llmops.role": role},
    )
    run_id = run.info.run_id
    params = {"suite": result.suite, "suite_version": result.suite_version, "model": result.model_ref,
              "items": len(result.items), "generated": result.generated, "cached": result.cached}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for key, summary in result.summaries.items():
        for stat in ("mean", "ci_low", "ci_high", "p50", "p95"):
            value = getattr(summary, stat)
            if value is not None:
                client.log_metric(run_id, f"{key}.{stat}", value)
        client.log_metric(run_id, f"{key}.unmeasured_rate", summary.unmeasured_rate)
    columns: dict[str, list[Any]] = {"item_id": [], "answer": []}
    for key in result.summaries:
        columns[f"score.{key}"] = []
    for item in result.items:
        columns["item_id"].append(item.item_id)
        columns["answer"].append(item.answers[0])
        for key in result.summaries:
            columns[f"score.{key}"].append(item.scores[key])
    client.log_table(run_id, data=columns, artifact_file="items_table.json")
    for path in (paths or {}).values():
        client.log_artifact(run_id, str(path))
    if gate is not None:
        client.set_tag(run_id, "llmops.gate.verdict", gate["verdict"])
    _log_for_mlflow_ui(result, run_id, run.info.experiment_id)
    retry_locked(client.set_terminated)(run_id)
    if result.model_version:
        evidence = {f"llmops.eval.{result.suite}.{k}": f"{s.mean:.4f}" for k, s in result.summaries.items() if s.mean is not None}
        evidence[f"llmops.eval.{result.suite}.run_id"] = run_id
        tag_model_version(result.model_version, evidence)
    _log_to_langsmith(result, run_id)
    return run_id


def _log_for_mlflow_ui(result: EvalResult, run_id: str, experiment_id: str) -> None:
    """Dataset, per-item traces and assessments (see `mlflow_eval`). The scores above are already
    logged, so a failure here is a warning and a run tag, not a lost evaluation."""
    from llmops.registry.store import configure

    try:
        from llmops.evaluation.mlflow_eval import log_eval_to_mlflow_ui

        logged = log_eval_to_mlflow_ui(result, run_id, experiment_id)
        configure().set_tag(run_id, "llmops.mlflow_dataset_id", logged.dataset_id)
    except Exception as error:  # noqa: BLE001 - any store error must not lose the scored run
        logging.getLogger(__name__).warning("eval run %s: could not log items for MLflow's evaluation views: %s",
                                            run_id, error)
        configure().set_tag(run_id, "llmops.mlflow_ui_error", str(error)[:500])


def _log_to_langsmith(result: EvalResult, run_id: str) -> None:
    """With `LANGSMITH_TRACING=true`, send the run to LangSmith too (failures logged, never raised)."""
    try:
        from llmops.integrations.langsmith import langsmith_enabled, log_eval_to_langsmith

        if langsmith_enabled():
            log_eval_to_langsmith(result, mlflow_run_id=run_id)
    except Exception as error:
        logging.getLogger(__name__).warning("could not send eval run to LangSmith: %s", error)
