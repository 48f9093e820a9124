"""The MLflow run of a fine-tune (rank 0 only): params, buffered metrics, artifacts, status.

Metrics are buffered and written in batches every few seconds, so a run of hundreds of short steps
does not spend its time in SQLite writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["RunTracker", "flatten"]

_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value
_FLUSH_EVERY_S = 3.0


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists and None become their text."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_PARAM_VALUE_LIMIT]
    return flat


class RunTracker:
    """One MLflow run. Create on rank 0 only; every method is a no-op on a tracker made with `enabled=False`."""

    def __init__(self, enabled: bool, experiment: str, run_name: str, run_id: str | None = None):
        self.enabled = enabled
        self.run_id = run_id
        self._buffer: list[Any] = []
        self._last_flush = time.monotonic()
        if not enabled:
            return
        from llmops.registry.store import configure, ensure_experiment, retry_locked

        self._client = configure()
        self._retry = retry_locked
        if run_id is not None:
            # Resuming: reopen the run that the interrupted job started (its status may be RUNNING or FAILED).
            self._retry(self._client.update_run)(run_id, status="RUNNING")
        else:
            experiment_id = ensure_experiment(experiment)
            run = self._retry(self._client.create_run)(experiment_id, run_name=run_name, tags={"llmops.job": "finetune"})
            self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params (at most 100 per request, MLflow's limit)."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._retry(self._client.log_batch)(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int, flush: bool = False) -> None:
        """Buffer metrics of `step`; written every few seconds or when `flush`."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if flush or time.monotonic() - self._last_flush > _FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics."""
        if not self.enabled or not self._buffer:
            return
        for start in range(0, len(self._buffer), 1000):
            self._retry(self._client.log_batch)(self.run_id, metrics=self._buffer[start:start + 1000])
        self._buffer = []
        self._last_flush = time.monotonic()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder."""
        if not self.enabled:
            return
        if Path(path).is_dir():
            self._retry(self._client.log_artifacts)(self.run_id, str(path), artifact_path)
        else:
            self._retry(self._client.log_artifact)(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        for key, value in tags.items():
            self._retry(self._client.set_tag)(self.run_id, key, str(value))

    def end(self, status: str) -> None:
        """Flush and set the final status: FINISHED, FAILED or KILLED."""
        if not self.enabled:
            return
        try:
            self.flush()
        finally:
            self._retry(self._client.set_terminated)(self.run_id, status=status)
