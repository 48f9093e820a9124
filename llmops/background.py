"""One background batcher for everything the gateway writes off the request path.

The trace writer (MLflow), the LangSmith writer and the traffic-capture writer all take items on the
request path and store them in bulk on a thread of their own. They share this class: a bounded queue
(`submit` is a `deque.append`, microseconds, and never blocks: a full queue drops the item and counts
it), one worker thread that wakes every `flush_interval` seconds (or when `max_batch` items wait) and
hands up to `max_batch` items at a time to `write`, and one stats type, `BatcherStats`, which the
gateway exports on `/metrics` per writer (`llmops:background_*{writer="traces"|"langsmith"|"capture"}`).

A failing store never reaches the request path: `write` raising counts the whole batch as failed,
and `write` may instead return how many items of the batch it could not store (one malformed record
must not cost the others). `prepare`, when given, turns each item into what `write` takes on the worker
thread (parsing a response, converting a trace); an item whose `prepare` raises counts as failed, one
for which it returns None is skipped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["BackgroundBatcher", "BatcherStats"]

_log = logging.getLogger(__name__)


@dataclass
class BatcherStats:
    """Counters of one background writer. `queued` is the number waiting now; the rest only grow."""

    queued: int = 0
    """Items waiting to be written (taken from the queue but not yet written count too)."""
    written: int = 0
    """Items the store took."""
    dropped: int = 0
    """Items refused because the queue was full."""
    failed: int = 0
    """Items the store (or `prepare`) refused; see the log for why."""
    batches: int = 0
    """Calls of `write`."""
    write_seconds: float = 0.0
    """Time spent in `prepare` and `write`."""

    @property
    def submitted(self) -> int:
        """Items offered so far: queued, written, dropped or failed."""
        return self.queued + self.written + self.dropped + self.failed


class BackgroundBatcher:
    """A bounded queue drained in batches by one worker thread.

    Args:
        name: What it writes (`traces`, `langsmith`, `capture`): the thread's name and the metrics' label.
        write: `write(batch) -> None | int`, called on the worker thread only; returns the number of
            items of `batch` it could not store (None: all stored); raising fails the whole batch.
        flush_interval: Seconds between writes (a crash loses at most this much).
        max_batch: Most items per `write` call.
        max_queue: Items waiting beyond this are dropped and counted.
        prepare: Optional `prepare(item) -> item | None`, run on the worker thread before `write`.
    """

    def __init__(self, name: str, write: Callable[[list], Optional[int]], flush_interval: float = 1.0,
                 max_batch: int = 1000, max_queue: int = 100_000,
                 prepare: Optional[Callable[[Any], Any]] = None):
        self.name = name
        self.write = write
        self.prepare = prepare
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._stats = BatcherStats()
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"llmops-{name}-writer", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> BatcherStats:
        """The live counters (the same object each time; `queued` is refreshed on each read)."""
        self._stats.queued = len(self._queue) + self._in_flight
        return self._stats

    @property
    def closed(self) -> bool:
        """True once `close` began: new items are dropped."""
        return self._closing

    def submit(self, item: Any) -> bool:
        """Queue one item; never blocks. False when it was dropped (queue full or closed)."""
        if len(self._queue) >= self.max_queue or self._closing:
            self._stats.dropped += 1
            return False
        self._queue.append(item)  # deque.append is atomic under the GIL: no lock on the request path
        if len(self._queue) >= self.max_batch:
            self._wake.set()
        return True

    # -------------------------------------------------------------------------------- worker

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closing
            while self._queue:
                with self._idle:  # taken and counted in flight at once, so `flush` never sees neither
                    batch = []
                    while self._queue and len(batch) < self.max_batch:
                        batch.append(self._queue.popleft())
                    self._in_flight = len(batch)
                self._write(batch)
                with self._idle:
                    self._in_flight = 0
                if len(self._queue) < self.max_batch and not (closing or self._wake.is_set()):
                    break  # what came in during the write waits for the next interval: fewer, fuller writes
            with self._idle:
                self._idle.notify_all()
            if closing:
                return

    def _write(self, batch: list) -> None:
        stats = self._stats
        started = time.perf_counter()
        if self.prepare is not None:
            prepared = []
            for item in batch:
                try:
                    item = self.prepare(item)
                except Exception:  # one bad item must not cost the others
                    stats.failed += 1
                    _log.exception("%s: could not prepare an item for writing", self.name)
                    continue
                if item is not None:
                    prepared.append(item)
            batch = prepared
        if batch:
            try:
                failed = self.write(batch) or 0
            except Exception as error:  # the store being down must not take the gateway down
                stats.failed += len(batch)
                _log.warning("%s: could not write %d item(s): %s", self.name, len(batch), error)
            else:
                stats.failed += failed
                stats.written += len(batch) - failed
            stats.batches += 1
        stats.write_seconds += time.perf_counter() - started

    # ---------------------------------------------------------------------------- lifecycle

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

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued and stop the worker; True when everything queued was written."""
        drained = self.flush(timeout)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        return drained and not self._queue
