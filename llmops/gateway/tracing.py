"""Request tracing that stays off the request path: one MLflow trace per request, written in bulk.

`@mlflow.trace` costs about 1.5 ms median (spikes of hundreds of ms) in the calling thread, and its
background exporter stores one trace per transaction, about 15 traces/s into SQLite on a small box;
a busy gateway would drop traces. Here the request path only fills a `RequestTrace` (timestamps
and a few attributes, microseconds) and appends it to a bounded queue. One exporter thread wakes
every `flush_interval` seconds and writes everything queued in one transaction
(`trace_store.SqlTraceWriter`), or through `MlflowClient.log_spans` for a tracking server, and
optionally to an OTLP endpoint. A full queue drops (and counts) traces instead of slowing requests.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["RequestTrace", "Tracer", "TraceStats"]

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


@dataclass
class TraceStats:
    """Counters of the exporter (monotonic since start)."""

    submitted: int = 0
    stored: int = 0
    dropped: int = 0
    failed: int = 0
    batches: int = 0
    write_seconds: float = 0.0


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
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stats = TraceStats()
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llmops-trace-exporter", daemon=True)
        self._thread.start()

    # --------------------------------------------------------------------------- request path

    def begin(self, name: str) -> Optional[RequestTrace]:
        """A new trace for this request, or None when the request is not sampled."""
        if self._closing or (self.sample_ratio < 1.0 and random.random() >= self.sample_ratio):
            return None
        return RequestTrace(name)

    def submit(self, trace: Optional[RequestTrace]) -> None:
        """Queue a finished trace (never blocks; drops it when the queue is full)."""
        if trace is None:
            return
        if not trace.end_ns:
            trace.end_ns = time.time_ns()
        self.stats.submitted += 1
        if len(self._queue) >= self.max_queue:
            self.stats.dropped += 1
            return
        self._queue.append(trace)  # deque.append is atomic under the GIL: no lock on the hot path

    # ------------------------------------------------------------------------------ exporter

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closing
            while self._queue:
                batch = []
                while self._queue and len(batch) < self.max_batch:
                    batch.append(self._queue.popleft())
                with self._idle:
                    self._in_flight = len(batch)
                self._write(batch)
                with self._idle:
                    self._in_flight = 0
            with self._idle:
                self._idle.notify_all()
            if closing:
                return

    def _write(self, batch: list[RequestTrace]) -> None:
        started = time.perf_counter()
        try:
            self.writer.write(batch)
        except Exception as error:  # the store being down must not take the gateway down
            self.stats.failed += len(batch)
            _log.warning("could not store %d trace(s): %s", len(batch), error)
        else:
            self.stats.stored += len(batch)
        self.stats.batches += 1
        self.stats.write_seconds += time.perf_counter() - started

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued now; True when the queue drained within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue or self._in_flight:
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the exporter (called on shutdown)."""
        self.flush(timeout)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
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
