"""LangSmith integration: the gateway's request traces and the eval runs' results, sent through the
`langsmith` SDK as well as to MLflow.

On when `LANGSMITH_TRACING=true` (and `langsmith` is installed); the SDK reads `LANGSMITH_ENDPOINT`,
`LANGSMITH_API_KEY` and `LANGSMITH_PROJECT` as usual. MLflow stays the system of record: everything
here is best effort, failures are logged and counted, never raised into serving or evaluation.

- Gateway: `LangSmithTraceWriter` is a trace writer like `trace_store`'s. The gateway tracer's
  exporter thread hands it each batch of `RequestTrace`s, which it queues on its own background
  batcher (`llmops.background`); that thread converts them into run trees (a root run per request,
  child runs `resolve`, `render`, `generate`) and posts them with `Client.batch_ingest_runs`
  (`POST /runs/batch`). A slow or unreachable LangSmith therefore delays neither requests nor the
  MLflow writes; a full queue drops and counts.
- Evaluation: `log_eval_to_langsmith(result)` posts one root run `eval:<suite>` with one child run
  per item (the row in, the answer and scores out).
"""

from __future__ import annotations

import datetime
import importlib.util
import logging
import os
import time
from typing import Any, Optional

from llmops.background import BackgroundBatcher, BatcherStats

__all__ = ["langsmith_enabled", "LangSmithTraceWriter", "log_eval_to_langsmith", "GATEWAY_PROJECT", "EVAL_PROJECT"]

_log = logging.getLogger(__name__)

GATEWAY_PROJECT = "llmops-gateway"
"""LangSmith project of the gateway's traces when `LANGSMITH_PROJECT` is not set."""
EVAL_PROJECT = "llmops-eval"
"""LangSmith project of the eval runs when `LANGSMITH_PROJECT` is not set."""

_SPAN_RUN_TYPES = {"resolve": "chain", "render": "prompt", "generate": "llm", "embed": "embedding"}


def langsmith_enabled() -> bool:
    """True when `LANGSMITH_TRACING` is `true` or `1` and the `langsmith` SDK is importable."""
    if os.environ.get("LANGSMITH_TRACING", "").strip().lower() not in {"true", "1"}:
        return False
    return importlib.util.find_spec("langsmith") is not None


def _project(default: str) -> str:
    return os.environ.get("LANGSMITH_PROJECT") or default


def _client(**kwargs: Any) -> Any:
    """A LangSmith client configured from the environment, without the SDK's own tracing queue
    (runs are posted explicitly with `batch_ingest_runs`)."""
    import langsmith

    # Read here rather than left to the SDK, which caches environment variables per process.
    for key, names in (("api_url", ("LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")),
                       ("api_key", ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"))):
        value = next((os.environ[name] for name in names if os.environ.get(name)), None)
        if value is not None:
            kwargs.setdefault(key, value)
    return langsmith.Client(auto_batch_tracing=False, **kwargs)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _utc(ns: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=ns // 1000)


class _RunBuilder:
    """Builds the run dicts of one trace tree (ids, `trace_id`, `parent_run_id`, `dotted_order`)."""

    def __init__(self, project: str):
        from langsmith.uuid import uuid7_from_datetime

        self._uuid = uuid7_from_datetime
        self.project = project
        self.runs: list[dict[str, Any]] = []
        self._trace_id: Optional[str] = None

    def add(self, name: str, run_type: str, start: datetime.datetime, end: datetime.datetime,
            inputs: Optional[dict] = None, outputs: Optional[dict] = None, metadata: Optional[dict] = None,
            parent: Optional[dict] = None, error: Optional[str] = None, tags: Optional[list[str]] = None) -> dict:
        run_id = str(self._uuid(start))
        stamp = start.strftime("%Y%m%dT%H%M%S%fZ") + run_id
        run: dict[str, Any] = {
            "id": run_id,
            "name": name,
            "run_type": run_type,
            "start_time": start,
            "end_time": max(end, start),
            "inputs": inputs or {},
            "outputs": outputs or {},
            "extra": {"metadata": {k: v for k, v in (metadata or {}).items() if v is not None}},
            "session_name": self.project,
            "tags": tags or ["llmops"],
        }
        if error:
            run["error"] = error
        if parent is None:
            self._trace_id = run_id
            run["trace_id"] = run_id
            run["dotted_order"] = stamp
        else:
            run["trace_id"] = parent["trace_id"]
            run["parent_run_id"] = parent["id"]
            run["dotted_order"] = f"{parent['dotted_order']}.{stamp}"
        self.runs.append(run)
        return run


def _as_dict(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list) and key == "output":
        return {"output": value[0]} if len(value) == 1 else {"choices": value}
    return {key: value}


def trace_runs(trace: Any, project: str, capture_text: bool = True) -> list[dict[str, Any]]:
    """The LangSmith run dicts of one gateway `RequestTrace`: the root run, then one child per span."""
    attributes = {k.removeprefix("llmops."): v for k, v in trace.attributes.items()}
    metadata = {
        "model": attributes.get("model"),
        "model_version": attributes.get("model_version"),
        "prompt_version": attributes.get("prompt_version"),
        "request_id": attributes.get("request_id"),
        "status": attributes.get("status"),
        "prompt_tokens": attributes.get("prompt_tokens"),
        "completion_tokens": attributes.get("completion_tokens"),
        "time_to_first_token_ms": attributes.get("time_to_first_token_ms"),
        "latency_ms": attributes.get("latency_ms"),
        "key_id": attributes.get("key_id"),
        "mlflow_trace_id": trace.trace_id,
        "ls_provider": "llmops",
        "ls_model_name": attributes.get("model_version") or attributes.get("model"),
    }
    inputs = _as_dict(trace.inputs, "input") if capture_text else {}
    outputs = _as_dict(trace.outputs, "output") if capture_text else {}
    usage = None
    if trace.usage is not None:
        prompt, completion = trace.usage
        usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
    builder = _RunBuilder(project)
    end_ns = trace.end_ns or time.time_ns()
    root = builder.add(trace.name, "chain", _utc(trace.start_ns), _utc(end_ns), inputs, outputs, metadata,
                       error=trace.error, tags=["llmops", "gateway"])
    versions = {"model_version": metadata["model_version"], "prompt_version": metadata["prompt_version"]}
    for name, start, end, attrs in trace.spans:
        run_type = _SPAN_RUN_TYPES.get(name, "chain")
        span_inputs: dict = {}
        span_outputs: dict = dict(attrs)
        if run_type == "llm":
            span_inputs = dict(inputs)
            span_outputs.update(outputs)
            if usage is not None:
                span_outputs["usage_metadata"] = usage
        builder.add(name, run_type, _utc(start), _utc(end), span_inputs, span_outputs,
                    {**versions, **({"ls_model_name": metadata["ls_model_name"], "ls_provider": "llmops"}
                                    if run_type == "llm" else {})},
                    parent=root, tags=["llmops", "gateway"])
    return builder.runs


class LangSmithTraceWriter:
    """A gateway trace writer (`write(traces)`, `close()`) that sends the traces to LangSmith.

    `write` runs on the tracer's exporter thread and only queues the traces on this writer's own
    `BackgroundBatcher`, whose thread converts them into runs and posts them with
    `Client.batch_ingest_runs`, so a slow LangSmith delays neither requests nor the MLflow writes.

    Args:
        project: LangSmith project (default `$LANGSMITH_PROJECT`, else `llmops-gateway`).
        capture_text: Send request messages and completion texts (off: only versions, sizes, timings).
        client: A `langsmith.Client` (default: one configured from the environment).
        max_queue: Traces waiting beyond this are dropped and counted.
        max_batch: Most traces per `batch_ingest_runs` call (the SDK also splits by size).
        flush_interval: Seconds between posts.
    """

    def __init__(self, project: Optional[str] = None, capture_text: bool = True, client: Any = None,
                 max_queue: int = 10_000, max_batch: int = 500, flush_interval: float = 1.0):
        self.project = project or _project(GATEWAY_PROJECT)
        self.capture_text = capture_text
        self._errors = 0
        self.client = client if client is not None else _client(tracing_error_callback=self._on_error)
        self.batcher = BackgroundBatcher("langsmith", self._send, flush_interval, max_batch, max_queue,
                                         prepare=self._runs)

    @property
    def stats(self) -> BatcherStats:
        """Queued, written (sent), dropped and failed traces."""
        return self.batcher.stats

    def _on_error(self, error: Exception) -> None:
        # The SDK logs the failure itself; `_send` turns the count into failed traces.
        self._errors += 1

    def write(self, traces: list[Any]) -> None:
        """Queue `traces` for LangSmith (never raises, never waits on the network)."""
        for trace in traces:
            self.batcher.submit(trace)

    def _runs(self, trace: Any) -> list[dict]:
        return trace_runs(trace, self.project, self.capture_text)

    def _send(self, batch: list[list[dict]]) -> int:
        errors_before = self._errors
        self.client.batch_ingest_runs(create=[run for runs in batch for run in runs])
        return len(batch) if self._errors != errors_before else 0

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything queued now; True when it drained within `timeout` seconds."""
        return self.batcher.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the sending thread."""
        self.batcher.close(timeout)


def eval_runs(result: Any, project: str, mlflow_run_id: Optional[str] = None) -> list[dict[str, Any]]:
    """The LangSmith run dicts of one `EvalResult`: the root `eval:<suite>`, then one child per item."""
    end = datetime.datetime.now(datetime.timezone.utc)
    start = end - datetime.timedelta(seconds=max(float(result.seconds or 0.0), 0.0))
    means = {key: summary.mean for key, summary in result.summaries.items()}
    metadata = {
        "suite": result.suite,
        "suite_version": result.suite_version,
        "model": result.model_ref,
        "model_version": result.model_version,
        "prompt_version": result.prompt_ref or "inline",
        "items": len(result.items),
        "generated": result.generated,
        "cached": result.cached,
        "mlflow_run_id": mlflow_run_id,
    }
    builder = _RunBuilder(project)
    root = builder.add(
        f"eval:{result.suite}", "chain", start, end,
        inputs={"suite": result.suite, "suite_version": result.suite_version, "model": result.model_ref,
                "prompt": result.prompt_ref, "items": len(result.items)},
        outputs={"means": means,
                 "scorers": {k: {"mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high,
                                 "measured": s.measured, "unmeasured": s.unmeasured}
                             for k, s in result.summaries.items()}},
        metadata=metadata, tags=["llmops", "eval"])
    versions = {"suite": result.suite, "model_version": result.model_version,
                "prompt_version": metadata["prompt_version"]}
    for item in result.items:
        outputs: dict[str, Any] = {"answer": item.answers[0] if item.answers else None, "scores": dict(item.scores)}
        if len(item.answers) > 1:
            outputs["answers"] = list(item.answers)
        builder.add(f"item:{item.item_id}", "chain", start, end, inputs=dict(item.row), outputs=outputs,
                    metadata={**versions, "item_id": item.item_id, "item_hash": item.item_hash,
                              "prompt_hash": item.prompt_hash, "cached": item.cached,
                              **({"slices": item.slices} if item.slices else {})},
                    parent=root, tags=["llmops", "eval"])
    return builder.runs


def log_eval_to_langsmith(result: Any, project: Optional[str] = None, client: Any = None,
                          mlflow_run_id: Optional[str] = None) -> bool:
    """Send one eval run to LangSmith: root run `eval:<suite>` (scorer means out, suite and versions as
    metadata) and one child run per item (row in; answer and scores out).

    Returns True when the SDK reported no error; failures are logged, never raised.
    """
    errors: list[Exception] = []
    try:
        runs = eval_runs(result, project or _project(EVAL_PROJECT), mlflow_run_id)
        if client is None:
            client = _client(tracing_error_callback=errors.append)
        client.batch_ingest_runs(create=runs)
    except Exception as error:
        _log.warning("could not send eval run %r to LangSmith: %s", getattr(result, "suite", "?"), error)
        return False
    if errors:
        _log.warning("LangSmith did not take eval run %r: %s", result.suite, errors[0])
        return False
    return True
