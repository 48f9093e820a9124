"""Writers that store `RequestTrace`s as MLflow traces, many per transaction or request.

Both writers turn a batch into MLflow `Span`s (`mlflow_spans`: a root span carrying the trace's tags,
token usage, inputs and outputs, and its child spans); they differ in how the spans reach the store.
- `SqlTraceWriter` (a store this process reaches: SQLite, `postgresql://`) stores a batch of new traces
  with one executemany per table (`registry.bulk_spans`, the rows MLflow's `log_spans` makes).
- `RestTraceWriter` (an `mlflow server` over HTTP) sends a batch as OTLP/HTTP protobuf requests through
  MLflow's own `RestStore.log_spans` (`POST /v1/traces` with the experiment id header; the server stores
  each with one `log_spans` call, in bulk too when it runs the `llmops+` store plugin).
`tests/integration/test_remote_tracing.py` checks that both paths store the same traces: previews,
token usage, tags, spans and their attributes.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from typing import Any, Optional

from llmops.gateway.tracing import RequestTrace

__all__ = ["SqlTraceWriter", "RestTraceWriter", "OtlpTraceWriter", "writer_for", "mlflow_spans"]

_log = logging.getLogger(__name__)


# One encoder for every attribute: `json.dumps(..., default=...)` would build a new encoder per call,
# which was a third of the exporter's time.
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode


def _json(value: Any) -> str:
    return _ENCODE(value)


def mlflow_spans(traces: list[RequestTrace], capture_text: bool) -> list:
    """The MLflow `Span`s of `traces`: per trace a root span (name, tags as `mlflow.traceTag.*` attributes,
    token usage, inputs and outputs when `capture_text`) and its child spans."""
    from mlflow.entities import Span

    return [Span.from_dict(content) for trace in traces for content in _span_contents(trace, capture_text)]


def _span_contents(trace: RequestTrace, capture_text: bool) -> list[dict]:
    """One trace's spans in MLflow's `Span.to_dict` schema."""
    b64_trace = base64.b64encode(trace.otel_id.to_bytes(16, "big")).decode()
    root_attrs = {
        "mlflow.spanType": "CHAIN",
        "mlflow.traceTag.mlflow.traceName": trace.name,  # how `log_spans` learns the trace name
        **{f"mlflow.traceTag.{k}": v for k, v in trace.tags.items()},
        **trace.attributes,
    }
    if trace.usage is not None:
        prompt, completion = trace.usage
        root_attrs["mlflow.chat.tokenUsage"] = {
            "input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
    if capture_text and trace.inputs is not None:
        root_attrs["mlflow.spanInputs"] = trace.inputs
    if capture_text and trace.outputs is not None:
        root_attrs["mlflow.spanOutputs"] = trace.outputs
    request_id = trace.attributes.get("llmops.request_id")
    if request_id:  # searchable on every store: `tags.llmops.request_id = '...'`
        root_attrs.setdefault("mlflow.traceTag.llmops.request_id", str(request_id))

    def span(span_id: int, parent: Optional[int], name: str, start: int, end: int, attributes: dict,
             status: str, message: str) -> dict:
        attributes = {"mlflow.traceRequestId": trace.trace_id, **attributes}
        return {
            "trace_id": b64_trace,
            "span_id": base64.b64encode(span_id.to_bytes(8, "big")).decode(),
            "parent_span_id": None if parent is None else base64.b64encode(parent.to_bytes(8, "big")).decode(),
            "name": name,
            "start_time_unix_nano": start,
            "end_time_unix_nano": end,
            "events": [],
            "status": {"code": f"STATUS_CODE_{status}", "message": message},
            "attributes": {key: _json(value) for key, value in attributes.items()},
            "links": [],
        }

    root_id = random.getrandbits(64)
    spans = [span(root_id, None, trace.name, trace.start_ns, trace.end_ns, root_attrs,
                  "ERROR" if trace.error else "OK", trace.error or "")]
    for name, start, end, attrs in trace.spans:
        attrs = {"mlflow.spanType": "LLM" if name == "generate" else "CHAIN", **attrs}
        spans.append(span(random.getrandbits(64), root_id, name, start, end, attrs, "OK", ""))
    return spans


class SqlTraceWriter:
    """Stores traces in an MLflow SQL tracking store (SQLite, PostgreSQL) that this process reaches.

    A batch of new traces goes in with one executemany per table (`registry.bulk_spans`); a batch that
    needs MLflow's general `log_spans` (e.g. a trace id already stored) goes through it.
    """

    def __init__(self, store: Any, experiment_id: str, capture_text: bool = True):
        self.store = store
        self.experiment_id = experiment_id
        self.capture_text = capture_text

    def write(self, traces: list[RequestTrace]) -> None:
        """Store `traces` in one transaction, retrying a locked SQLite."""
        from llmops.registry.bulk_spans import bulk_log_spans
        from llmops.registry.store import retry_locked

        spans = mlflow_spans(traces, self.capture_text)

        def store() -> None:
            if not bulk_log_spans(self.store, self.experiment_id, spans, translate=False):
                self.store.log_spans(self.experiment_id, spans)

        retry_locked(store)()


class RestTraceWriter:
    """Stores traces in an `mlflow server` (MLflow >= 3.4) as OTLP requests of up to `request_traces`
    traces each, through MLflow's `RestStore.log_spans` (its credentials, retries, version check).

    The server stores each request with one `log_spans` call, whose ORM work per trace is what limits
    throughput; up to `concurrency` requests are in flight at once, so a server with several workers
    on PostgreSQL takes a batch in parallel (`mlflow server --workers N`).
    """

    def __init__(self, store: Any, experiment_id: str, capture_text: bool = True, request_traces: int = 200,
                 concurrency: int = 4):
        self.store = store
        self.experiment_id = experiment_id
        self.capture_text = capture_text
        self.request_traces = request_traces
        self.concurrency = concurrency
        self._pool: Any = None

    def write(self, traces: list[RequestTrace]) -> int:
        """Send the batch; returns how many traces the server refused (their requests failed)."""
        chunks = [traces[i:i + self.request_traces] for i in range(0, len(traces), self.request_traces)]
        if len(chunks) == 1 or self.concurrency <= 1:
            return sum(self._send(chunk) for chunk in chunks)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llmops-trace-request")
        return sum(self._pool.map(self._send, chunks))

    def _send(self, traces: list[RequestTrace]) -> int:
        try:
            self.store.log_spans(self.experiment_id, mlflow_spans(traces, self.capture_text))
        except Exception as error:  # the other requests of the batch may still succeed
            _log.warning("the tracking server refused %d trace(s): %s", len(traces), error)
            return len(traces)
        return 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class OtlpTraceWriter:
    """Sends the same spans to an OTLP/HTTP collector, then hands the batch to `inner`."""

    def __init__(self, endpoint: str, inner: Any, capture_text: bool = True):
        from llmops.extras import require

        require("opentelemetry.exporter.otlp.proto.http", "OTLP trace export")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        self.exporter = OTLPSpanExporter(endpoint=endpoint)
        self.inner = inner
        self.capture_text = capture_text

    def write(self, traces: list[RequestTrace]) -> None:
        """Export to the collector (failures logged), then store in MLflow."""
        otel_spans = [span._span for span in mlflow_spans(traces, self.capture_text)]
        try:
            self.exporter.export(otel_spans)
        except Exception as error:  # the collector is optional; MLflow still gets the trace
            _log.warning("OTLP export of %d span(s) failed: %s", len(otel_spans), error)
        self.inner.write(traces)

    def close(self) -> None:
        self.exporter.shutdown()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def writer_for(experiment: str, capture_text: bool = True, otlp_endpoint: Optional[str] = None) -> Any:
    """The fastest writer the configured MLflow store allows, for experiment `experiment`."""
    from llmops.registry.store import configure, ensure_experiment

    client = configure()
    experiment_id = ensure_experiment(experiment)
    store = client._tracking_client.store
    if hasattr(store, "engine") and hasattr(store, "ManagedSessionMaker"):
        writer: Any = SqlTraceWriter(store, experiment_id, capture_text)
    else:
        writer = RestTraceWriter(store, experiment_id, capture_text)
    if otlp_endpoint:
        writer = OtlpTraceWriter(otlp_endpoint, writer, capture_text)
    return writer
