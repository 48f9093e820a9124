"""Read-only access to what lineage needs from MLflow tracking: runs, their artifacts, traces.

Only public MLflow APIs (`MlflowClient.get_run`, `get_metric_history`, `mlflow.artifacts`,
`mlflow.search_traces`, `mlflow.get_trace`) on the store `llmops.registry.store` configures, so it
works the same on a SQLite file, PostgreSQL and an `mlflow server` with proxied artifacts.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from llmops.lineage import LineageError

__all__ = ["RunRecord", "TraceRecord", "get_run_record", "read_run_artifact", "download_run_artifact",
           "metric_history", "find_trace"]

# Request ids come from a client header; they go into a filter string, so quotes are not allowed.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def _iso(ms: Optional[int]) -> Optional[str]:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunRecord:
    """An MLflow run as lineage shows it."""

    run_id: str
    experiment: str
    name: str
    status: str
    start: Optional[str]
    end: Optional[str]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def _client():
    from llmops.registry.store import configure

    return configure()


def get_run_record(run_id: str) -> Optional[RunRecord]:
    """The run `run_id` (latest value of each metric), or None when the store no longer has it."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    try:
        experiment = client.get_experiment(run.info.experiment_id).name
    except MlflowException:
        experiment = run.info.experiment_id
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") or k == "mlflow.runName"}
    return RunRecord(run_id, experiment, run.info.run_name or "", run.info.status, _iso(run.info.start_time),
                     _iso(run.info.end_time), dict(run.data.metrics), dict(run.data.params), tags)


def metric_history(run_id: str, key: str) -> list[float]:
    """Every logged value of metric `key` of a run, in step order."""
    history = _client().get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


def download_run_artifact(run_id: str, artifact_path: str, dest: Path) -> Optional[Path]:
    """Download one artifact (file or folder) of a run into `dest`; None when it does not exist."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar in the middle of a tree
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest)))
    except (MlflowException, OSError):
        return None


def read_run_artifact(run_id: str, artifact_path: str) -> Optional[str]:
    """The text of a run's artifact file, or None when it does not exist."""
    with tempfile.TemporaryDirectory(prefix="llmops-lineage-") as folder:
        path = download_run_artifact(run_id, artifact_path, Path(folder))
        if path is None or not path.is_file():
            return None
        return path.read_text(encoding="utf-8")


@dataclass
class TraceRecord:
    """A gateway trace: which model version and prompt version served one request."""

    trace_id: str
    request_id: Optional[str]
    time: Optional[str]
    status: str
    model: Optional[str]
    model_version: Optional[str]
    prompt_version: Optional[str]
    experiment: Optional[str]
    others: list[str] = field(default_factory=list)
    """Other traces with the same request id (clients may reuse ids); the newest is shown."""


def _to_record(trace: Any) -> TraceRecord:
    info = trace.info
    tags = dict(info.tags or {})
    request_id = info.client_request_id or tags.get("llmops.request_id")
    experiment = getattr(getattr(info, "trace_location", None), "mlflow_experiment", None)
    return TraceRecord(
        trace_id=info.trace_id, request_id=request_id, time=_iso(info.request_time), status=str(info.state),
        model=tags.get("llmops.model"), model_version=tags.get("llmops.model_version"),
        prompt_version=tags.get("llmops.prompt_version"),
        experiment=getattr(experiment, "experiment_id", None),
    )


def _experiment_ids(client: Any) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def find_trace(trace_id: Optional[str] = None, request_id: Optional[str] = None) -> TraceRecord:
    """The trace with MLflow id `trace_id`, or the newest trace of gateway request `request_id`.

    The gateway answers every request with `x-request-id` (the client's own id when it sent one, else the
    gateway's) and `x-llmops-request-id` (always the gateway's); its traces carry the gateway's id as the tag
    `llmops.request_id` and a client's id as `llmops.client_request_id` (tags are searchable on every store,
    including a tracking server). Each is searched; a client id reused by several requests finds the newest.

    Raises:
        LineageError: no such trace, or an id that cannot be searched for.
    """
    for value, what in ((trace_id, "trace id"), (request_id, "request id")):
        if value is not None and not _SAFE_ID.match(value):
            raise LineageError(f"invalid {what} {value!r}: letters, digits and . _ : / + = - only, at most 128 "
                               "characters (a trace id looks like tr-<32 hex digits>)")
    import mlflow

    client = _client()
    if trace_id is not None:
        trace = mlflow.get_trace(trace_id, silent=True)
        if trace is None:
            raise LineageError(f"no trace {trace_id!r} in the store at {mlflow.get_tracking_uri()}")
        return _to_record(trace)
    if request_id is None:
        raise LineageError("give a trace id or a request id")
    locations = _experiment_ids(client)
    found: list[Any] = []
    for condition in (f"trace.client_request_id = '{request_id}'", f"tags.`llmops.request_id` = '{request_id}'",
                      f"tags.`llmops.client_request_id` = '{request_id}'"):
        found = mlflow.search_traces(locations=locations, filter_string=condition, max_results=50,
                                     order_by=["timestamp_ms DESC"], return_type="list", include_spans=False)
        if found:
            break
    if not found:
        raise LineageError(
            f"no trace has request id {request_id!r} (the gateway's x-request-id header); it may not have "
            "been sampled (tracing.sample_ratio), or the gateway traced into another store"
        )
    record = _to_record(found[0])
    record.others = [t.info.trace_id for t in found[1:]]
    return record
