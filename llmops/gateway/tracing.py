"""Request tracing that stays off the request path: one MLflow trace per request, written in bulk.

`@mlflow.trace` costs about 1.5 ms median (spikes of hundreds of ms) in the calling thread, and its
background exporter stores one trace per transaction, about 15 traces/s into SQLite on a small box;
a busy gateway would drop traces. Here the request path only fills a `RequestTrace` (timestamps
and a few attributes, microseconds) and hands it to a `BackgroundBatcher` (`llmops.background`). Its
thread wakes every `flush_interval` seconds and writes everything queued in one transaction
(`trace_store.SqlTraceWriter`), or in one batched request to a tracking server
(`trace_store.OtlpServerWriter`), and optionally to an OTLP endpoint. A full queue drops (and counts)
traces instead of slowing requests.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from llmops.background import BackgroundBatcher, BatcherStats

__all__ = ["RequestTrace", "Tracer"]

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class RequestTrace:
    """What one request records: its root span (name, times, attributes) and child spans.

    Filled on the request path, converted to MLflow rows on the exporter thread.
    """

    name: str
    otel_id: int = field(default_factory=lambda: random.getrandbits(128))
    start_ns: int = field(default_factory=time.time_ns)
    end_ns: int = 0
    spans: list = field(default_factory=list)  # (name, start_ns, end_ns, attributes)
    attributes: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    inputs: Any = None
    outputs: Any = None
    usage: Optional[tuple[int, int]] = None  # (prompt tokens, completion tokens)
    error: Optional[str] = None

    @property
    def trace_id(self) -> str:
        """The MLflow trace id (`tr-` + the OpenTelemetry trace id in hex), sent as `x-llmops-trace-id`."""
        return f"tr-{self.otel_id:032x}"

    def add_span(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """Record a finished child span (`resolve`, `render`, `generate`)."""
        self.spans.append((name, start_ns, end_ns, attributes))

    def set_tag(self, key: str, value: Any) -> None:
        """A trace tag (searchable: `tags.llmops.model_version = 'capitals/2'`), also a root attribute."""
        self.tags[key] = str(value)
        self.attributes[key] = value


class Tracer:
    """Samples requests, queues their traces and writes them in the background.

    Args:
        writer: An object with `write(traces: list[RequestTrace]) -> None` (see `trace_store`),
            called on the exporter thread only.
        sample_ratio: Fraction of requests traced.
        flush_interval: Seconds between bulk writes.
        max_batch: Most traces per write.
        max_queue: Queue bound; traces beyond it are dropped and counted.
    """

    def __init__(self, writer: Any, sample_ratio: float = 1.0, flush_interval: float = 0.5,
                 max_batch: int = 2000, max_queue: int = 50_000):
        self.writer = writer
        self.sample_ratio = sample_ratio
        self.batcher = BackgroundBatcher("traces", writer.write, flush_interval, max_batch, max_queue)

    @property
    def stats(self) -> BatcherStats:
        """Queued, written, dropped and failed traces (MLflow's side)."""
        return self.batcher.stats

    @property
    def batchers(self) -> list[BackgroundBatcher]:
        """This tracer's batcher and those of its extra writers (LangSmith), for `/metrics`."""
        extra = getattr(self.writer, "extra", ())
        return [self.batcher, *(w.batcher for w in extra if isinstance(getattr(w, "batcher", None), BackgroundBatcher))]

    # --------------------------------------------------------------------------- request path

    def begin(self, name: str) -> Optional[RequestTrace]:
        """A new trace for this request, or None when the request is not sampled."""
        if self.batcher.closed or (self.sample_ratio < 1.0 and random.random() >= self.sample_ratio):
            return None
        return RequestTrace(name)

    def submit(self, trace: Optional[RequestTrace]) -> None:
        """Queue a finished trace (never blocks; drops and counts it when the queue is full)."""
        if trace is None:
            return
        if not trace.end_ns:
            trace.end_ns = time.time_ns()
        self.batcher.submit(trace)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued now; True when the queue drained within `timeout` seconds."""
        return self.batcher.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the exporter (called on shutdown), then close the writer."""
        self.batcher.close(timeout)
        close = getattr(self.writer, "close", None)
        if close is not None:
            close()


class _FanOutWriter:
    """Hands each batch to the MLflow writer (whose failures the tracer counts) and to extra writers
    (LangSmith), whose failures are only logged."""

    def __init__(self, primary: Any, *extra: Any):
        self.primary = primary
        self.extra = extra

    def write(self, traces: list[RequestTrace]) -> None:
        for writer in self.extra:
            try:
                writer.write(traces)
            except Exception as error:
                _log.warning("trace writer %s failed: %s", type(writer).__name__, error)
        self.primary.write(traces)

    def close(self) -> None:
        for writer in (*self.extra, self.primary):
            close = getattr(writer, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as error:
                    _log.warning("closing trace writer %s failed: %s", type(writer).__name__, error)


def create_tracer(config: Any) -> Optional[Tracer]:
    """The tracer for a `TracingConfig` (None when tracing is off); the store is the registry's."""
    if not config.enabled:
        return None
    from llmops.gateway.trace_store import writer_for

    writer = writer_for(config.experiment, capture_text=config.capture_text, otlp_endpoint=config.otlp_endpoint)
    from llmops.integrations.langsmith import langsmith_enabled

    if langsmith_enabled():  # LANGSMITH_TRACING=true: the traces go to LangSmith as well
        try:
            from llmops.integrations.langsmith import LangSmithTraceWriter

            writer = _FanOutWriter(writer, LangSmithTraceWriter(capture_text=config.capture_text))
        except Exception as error:  # LangSmith is optional; MLflow still gets every trace
            _log.warning("LangSmith tracing is off: %s", error)
    return Tracer(writer, config.sample_ratio, config.flush_interval, config.max_batch, config.max_queue)
