"""Traffic capture: one record per request, appended to a Parquet dataset that feeds drift.

Layout: `ROOT/date=YYYY-MM-DD/model=NAME/part-<time>-<random>.parquet` (a Hive-partitioned dataset
that pyarrow, pandas, DuckDB and Spark read as is). The request path only appends a dict to a queue
(microseconds). A writer thread wakes every `flush_interval` seconds, turns what is queued into one
file per (date, model) and writes it as `part-….parquet.tmp`, fsyncs it, then renames it with
`os.replace`. A crash (even SIGKILL) therefore leaves only complete `.parquet` files plus at most
some `.tmp` files, which `read` ignores and the next writer removes; it loses at most the records
queued since the last flush (`flush_interval` seconds of traffic). A full queue drops records and
counts them in `CaptureWriter.dropped`, rather than slowing requests.

Columns (one row per request; per-choice lists for `n > 1`):
    time (timestamp[us, UTC]), request_id, key_id, endpoint, model (the requested ref),
    model_version (`NAME/VERSION`), prompt_ref, prompt_version, status,
    prompt_token_ids (list<int32>), completion_token_ids (list<list<int32>>, one per choice),
    finish_reasons (list<string>), prompt_tokens, completion_tokens, latency_ms, ttft_ms,
    prompt_text, completion_text (list<string>) -- text only with `capture.text: true`.
Token ids are null where the engine did not report them (an upstream that is not vLLM).
"""

from __future__ import annotations

import collections
import datetime as dt
import glob
import logging
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from pydantic import Field

from llmops.config import ConfigModel, ConfigPath

__all__ = ["CaptureConfig", "CaptureWriter", "SCHEMA_FIELDS", "read", "read_table"]

_log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class CaptureConfig(ConfigModel):
    """Where and how requests are recorded for drift analysis."""

    enabled: bool = False
    """Record every request (token ids always; text only with `text`)."""
    path: ConfigPath = Path("traffic")
    """Root folder of the Parquet dataset (relative paths resolve against the config file's folder)."""
    text: bool = False
    """Also store prompt and completion text (off: token ids, versions and timings only)."""
    flush_interval: float = Field(1.0, gt=0.0, le=3600.0)
    """Seconds between writes; a crash loses at most the records of this last interval."""
    max_queue: int = Field(100_000, ge=1)
    """Records waiting beyond this are dropped (and counted)."""


def _schema() -> Any:
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    return pa.schema([
        ("time", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("key_id", pa.string()),
        ("endpoint", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("prompt_ref", pa.string()),
        ("prompt_version", pa.string()),
        ("status", pa.int32()),
        ("prompt_token_ids", ids),
        ("completion_token_ids", pa.list_(ids)),
        ("finish_reasons", pa.list_(pa.string())),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("prompt_text", pa.string()),
        ("completion_text", pa.list_(pa.string())),
    ])


SCHEMA_FIELDS = ("time", "request_id", "key_id", "endpoint", "model", "model_version", "prompt_ref",
                 "prompt_version", "status", "prompt_token_ids", "completion_token_ids", "finish_reasons",
                 "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "prompt_text", "completion_text")


def _partition_name(model_version: Optional[str]) -> str:
    name = (model_version or "").split("/", 1)[0].split("@", 1)[0]
    return _UNSAFE.sub("_", name) or "_unknown"


class CaptureWriter:
    """Queues records and writes them to Parquet on a background thread.

    A record is a dict with the keys of `SCHEMA_FIELDS` (missing ones are null) where `time` is a
    Unix time in seconds; or a callable returning such a dict, evaluated on the writer thread (so a
    proxy can hand over raw response bytes and parse them off the request path).

    Args:
        root: Dataset root folder (created).
        flush_interval: Seconds between writes.
        max_queue: Most records queued.
        keep_text: Keep `prompt_text` / `completion_text` (else they are nulled before writing).
    """

    def __init__(self, root: Union[str, Path], flush_interval: float = 1.0, max_queue: int = 100_000,
                 keep_text: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.keep_text = keep_text
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._closed = False
        self._write_lock = threading.Lock()
        for stale in glob.glob(str(self.root / "**" / "*.parquet.tmp"), recursive=True):
            os.unlink(stale)  # left by a crash mid-write: never renamed, so never complete
        self._thread = threading.Thread(target=self._run, name="llmops-capture", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: CaptureConfig) -> Optional["CaptureWriter"]:
        """A writer for `config`, None when capture is disabled."""
        if not config.enabled:
            return None
        return cls(config.path, config.flush_interval, config.max_queue, config.text)

    def submit(self, record: Union[dict, Callable[[], Optional[dict]]]) -> None:
        """Queue one record (non-blocking; dropped and counted when the queue is full)."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(record)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write everything queued now (called by the writer thread; safe to call from others)."""
        with self._write_lock:
            batch = []
            while self._queue:
                item = self._queue.popleft()
                try:
                    record = item() if callable(item) else item
                except Exception:  # a malformed upstream response must not stop the writer
                    _log.exception("capture: could not build a record")
                    self.failed += 1
                    continue
                if record is not None:
                    batch.append(record)
            if batch:
                try:
                    self._write(batch)
                    self.written += len(batch)
                except Exception:
                    _log.exception("capture: writing %d record(s) to %s failed", len(batch), self.root)
                    self.failed += len(batch)

    def _write(self, records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        for record in records:
            when = dt.datetime.fromtimestamp(record.get("time") or time.time(), dt.timezone.utc)
            row = {name: record.get(name) for name in SCHEMA_FIELDS}
            row["time"] = when
            if not self.keep_text:
                row["prompt_text"] = row["completion_text"] = None
            groups[(when.strftime("%Y-%m-%d"), _partition_name(row["model_version"] or row["model"]))].append(row)
        schema = _schema()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for (day, model), rows in groups.items():
            folder = self.root / f"date={day}" / f"model={model}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{stamp}-{random.getrandbits(64):016x}.parquet"
            temporary = final.with_name(final.name + ".tmp")
            table = pa.Table.from_pylist(rows, schema=schema)
            with open(temporary, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()


def _files(root: Path, model: Optional[str]) -> list[str]:
    pattern = root / "date=*" / (f"model={_partition_name(model)}" if model else "model=*") / "*.parquet"
    return sorted(glob.glob(str(pattern)))


def _since_time(since: Union[None, float, dt.datetime, dt.timedelta, str]) -> Optional[dt.datetime]:
    if since is None:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    if isinstance(since, dt.timedelta):
        return now - since
    if isinstance(since, dt.datetime):
        return since if since.tzinfo else since.replace(tzinfo=dt.timezone.utc)
    if isinstance(since, (int, float)):
        return dt.datetime.fromtimestamp(since, dt.timezone.utc)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(since))
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return now - dt.timedelta(seconds=seconds)
    return _since_time(dt.datetime.fromisoformat(str(since)))


def read_table(model: Optional[str] = None, since: Union[None, float, dt.datetime, dt.timedelta, str] = None,
               root: Union[str, Path] = "traffic") -> Any:
    """Captured records as a `pyarrow.Table` (columns of `SCHEMA_FIELDS`), oldest first.

    Args:
        model: A model name, or a ref whose name part is used (`capitals@production` -> `capitals`);
            None reads every model.
        since: Only records at or after this time: a datetime (naive = UTC), a Unix time, a timedelta
            back from now, or a duration string (`30m`, `24h`, `7d`) or an ISO timestamp.
        root: The dataset root (`capture.path` of the gateway config).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = _schema()
    tables = [pq.read_table(path, schema=schema) for path in _files(Path(root), model)]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    start = _since_time(since)
    if start is not None and table.num_rows:
        table = table.filter(pc.greater_equal(table["time"], pa.scalar(start, type=schema.field("time").type)))
    if table.num_rows:
        table = table.take(pc.sort_indices(table, sort_keys=[("time", "ascending")]))
    return table


def read(model: Optional[str] = None, since: Union[None, float, dt.datetime, dt.timedelta, str] = None,
         root: Union[str, Path] = "traffic") -> list[dict]:
    """Captured records as a list of dicts (see `read_table` for the arguments), oldest first."""
    return read_table(model, since, root).to_pylist()

