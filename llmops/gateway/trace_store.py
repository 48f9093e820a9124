"""Writers that store `RequestTrace`s as MLflow traces, many per transaction or request.

- `SqlTraceWriter` (a store MLflow reaches directly: SQLite, `postgresql://`) inserts the rows MLflow's
  own `log_spans` would create (trace_info, trace_tags, spans; span content in MLflow's JSON schema,
  spans location `TRACKING_STORE`) with one executemany per table. MLflow's `SqlAlchemyStore.log_spans`
  does the same through the ORM with a flush and an update per trace; this is why the bulk path exists.
  It is tied to the schema of the pinned MLflow minor (3.17); the tests read the traces back with
  `mlflow.search_traces`, which is what keeps it honest.
- `RestTraceWriter` (an `mlflow server` over HTTP) sends a whole batch as one OTLP/HTTP protobuf request
  through MLflow's own `RestStore.log_spans` (`POST /v1/traces` with the experiment id header; the server
  stores it with one `log_spans` call). `tests/integration/test_remote_tracing.py` checks that both paths
  store the same traces: previews, token usage, tags, spans and their attributes.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from typing import Any, Optional

from llmops.gateway.tracing import RequestTrace

__all__ = ["SqlTraceWriter", "RestTraceWriter", "OtlpTraceWriter", "writer_for"]

_log = logging.getLogger(__name__)


# One encoder for every attribute: `json.dumps(..., default=...)` would build a new encoder per call,
# which was a third of the exporter's time.
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode


def _json(value: Any) -> str:
    return _ENCODE(value)


class _SpanRows:
    """MLflow's view of one RequestTrace: its trace id and span dicts (MLflow's `Span.to_dict` schema)."""

    def __init__(self, trace: RequestTrace, capture_text: bool):
        otel_trace_id = trace.otel_id
        self.trace = trace
        self.trace_id = trace.trace_id
        self._b64_trace = base64.b64encode(otel_trace_id.to_bytes(16, "big")).decode()
        root_id = random.getrandbits(64)
        root_attrs = {
            "mlflow.spanType": "CHAIN",
            "mlflow.traceTag.mlflow.traceName": trace.name,  # how a server's `log_spans` learns the trace name
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
        self.tags = dict(trace.tags)
        request_id = trace.attributes.get("llmops.request_id")
        if request_id:  # searchable on every store: `tags.llmops.request_id = '...'`
            self.tags.setdefault("llmops.request_id", str(request_id))
            root_attrs.setdefault("mlflow.traceTag.llmops.request_id", str(request_id))
        status = "ERROR" if trace.error else "OK"
        self.status = status
        self.spans = [self._span(root_id, None, trace.name, trace.start_ns, trace.end_ns, root_attrs, status,
                                 trace.error or "")]
        for name, start, end, attrs in trace.spans:
            attrs = {"mlflow.spanType": "LLM" if name == "generate" else "CHAIN", **attrs}
            self.spans.append(self._span(random.getrandbits(64), root_id, name, start, end, attrs, "OK", ""))

    def _span(self, span_id: int, parent: Optional[int], name: str, start: int, end: int,
              attributes: dict, status: str, message: str) -> dict:
        attributes = {"mlflow.traceRequestId": self.trace_id, **attributes}
        return {
            "span_id": f"{span_id:016x}",
            "parent_span_id": None if parent is None else f"{parent:016x}",
            "name": name,
            "type": attributes["mlflow.spanType"],
            "status": status,
            "start": start,
            "end": end,
            "content": {
                "trace_id": self._b64_trace,
                "span_id": base64.b64encode(span_id.to_bytes(8, "big")).decode(),
                "parent_span_id": None if parent is None else base64.b64encode(parent.to_bytes(8, "big")).decode(),
                "name": name,
                "start_time_unix_nano": start,
                "end_time_unix_nano": end,
                "events": [],
                "status": {"code": f"STATUS_CODE_{status}", "message": message},
                "attributes": {key: _json(value) for key, value in attributes.items()},
                "links": [],
            },
        }

    @staticmethod
    def preview(value: Any, role: str) -> Optional[str]:
        """The trace's request or response preview, made as MLflow's server makes it from the root span
        (the last message of `role` when the value holds chat messages, else the JSON, cut to 1,000)."""
        if value is None:
            return None
        from mlflow.tracing.utils.truncation import _get_truncated_preview

        return _get_truncated_preview(_json(value), role=role)


class SqlTraceWriter:
    """Bulk-inserts traces into an MLflow SQL tracking store (SQLite, PostgreSQL, MySQL)."""

    def __init__(self, store: Any, experiment_id: str, capture_text: bool = True):
        from mlflow.store.tracking.dbmodels.models import SqlSpan, SqlTraceInfo, SqlTraceTag

        self.store = store
        self.experiment_id = int(experiment_id)
        self.capture_text = capture_text
        self.artifact_location = store.get_experiment(experiment_id).artifact_location.rstrip("/")
        self._tables = SqlTraceInfo.__table__, SqlTraceTag.__table__, SqlSpan.__table__

    def write(self, traces: list[RequestTrace]) -> None:
        """Insert `traces` (and their spans and tags) in one transaction, retrying a locked SQLite."""
        from llmops.registry.store import retry_locked

        rows = [_SpanRows(trace, self.capture_text) for trace in traces]
        infos, tags, spans = [], [], []
        for item in rows:
            trace = item.trace
            usage = trace.usage or (None, None)
            infos.append({
                "request_id": item.trace_id,
                "experiment_id": self.experiment_id,
                "timestamp_ms": trace.start_ns // 1_000_000,
                "execution_time_ms": (trace.end_ns - trace.start_ns) // 1_000_000,
                "status": item.status,
                "client_request_id": None,  # as MLflow's `log_spans` leaves it; the request id is a tag
                "request_preview": item.preview(trace.inputs, "user") if self.capture_text else None,
                "response_preview": item.preview(trace.outputs, "assistant") if self.capture_text else None,
                "db_payload_generation": 1,
                "trace_name": trace.name,
                "input_tokens": usage[0],
                "output_tokens": usage[1],
                "total_tokens": None if trace.usage is None else usage[0] + usage[1],
            })
            tags.append({"request_id": item.trace_id, "key": "mlflow.artifactLocation",
                         "value": f"{self.artifact_location}/traces/{item.trace_id}/artifacts"})
            tags.append({"request_id": item.trace_id, "key": "mlflow.trace.spansLocation", "value": "TRACKING_STORE"})
            tags.append({"request_id": item.trace_id, "key": "mlflow.traceName", "value": trace.name})
            tags.extend({"request_id": item.trace_id, "key": k, "value": v} for k, v in item.tags.items())
            for span in item.spans:
                spans.append({
                    "trace_id": item.trace_id,
                    "experiment_id": self.experiment_id,
                    "span_id": span["span_id"],
                    "parent_span_id": span["parent_span_id"],
                    "name": span["name"],
                    "type": span["type"],
                    "status": span["status"],
                    "start_time_unix_nano": span["start"],
                    "end_time_unix_nano": span["end"],
                    "content": _ENCODE(span["content"]),
                })
        retry_locked(self._insert)(infos, tags, spans)

    def _insert(self, infos: list, tags: list, spans: list) -> None:
        info_table, tag_table, span_table = self._tables
        with self.store.engine.begin() as connection:
            connection.execute(info_table.insert(), infos)
            connection.execute(tag_table.insert(), tags)
            connection.execute(span_table.insert(), spans)


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
        from mlflow.entities import Span

        try:
            spans = [Span.from_dict(dict(span["content"])) for trace in traces
                     for span in _SpanRows(trace, self.capture_text).spans]
            self.store.log_spans(self.experiment_id, spans)
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
        from mlflow.entities import Span

        otel_spans = []
        for trace in traces:
            for span in _SpanRows(trace, self.capture_text).spans:
                otel_spans.append(Span.from_dict(dict(span["content"]))._span)
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
