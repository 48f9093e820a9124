"""The traffic writer: records queued on the request path, written as Parquet files by a background batcher.

The request path only appends a dict (or a callable that builds it, run off the request path) to the
queue of a `BackgroundBatcher`. Every `flush_interval` seconds the batch becomes one file per (day,
model) partition. Each file name carries the gateway's host, process id and a random part, so any
number of gateways write into one dataset without ever colliding:

    ROOT/date=2026-11-30/model=capitals/part-20261130T081502-HOST-PID-RANDOM-SEQ.parquet

On a local filesystem a file is written as `….parquet.tmp`, fsynced, then renamed, so a crash (even
SIGKILL) leaves only complete `.parquet` files plus at most some `.tmp` files, which readers ignore. At
start-up a writer removes the `.tmp` files that crashed processes of its own host left (their process is
gone) and any older than an hour; it never touches the in-flight files of another gateway. On an
object store a file is one PUT, which appears whole or not at all, so no temporary file is needed.

A record that does not fit the schema (a malformed value from a client or a replica) is counted as failed
and logged; the rest of its batch is written. A full queue drops records and counts them.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from pydantic import Field

from llmops.background import BackgroundBatcher, BatcherStats
from llmops.config import ConfigModel
from llmops.errors import ConfigError
from llmops.traffic.location import DatasetLocation, DatasetRoot, open_root
from llmops.traffic.schema import arrow_schema, partition_name, to_row

__all__ = ["CaptureConfig", "TrafficWriter"]

_log = logging.getLogger(__name__)
_STALE_SECONDS = 3600.0
_TEMPORARY = re.compile(r"^part-\d{8}T\d{6}-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[0-9a-f]+-\d+\.parquet\.tmp$")
_DIRECT_PUT = {"s3", "gcs", "abfs"}  # object stores: a PUT is atomic, a rename is a copy


class CaptureConfig(ConfigModel):
    """Where and how requests are recorded for drift analysis."""

    enabled: bool = False
    """Record every request (token ids always; text only with `text`)."""
    path: DatasetLocation = Path("traffic")
    """The dataset: a folder (relative paths resolve against the config file's folder) or a filesystem URI
    such as `s3://bucket/prefix`, shared by every gateway of a fleet."""
    text: bool = False
    """Also store prompt and completion text (off: token ids, versions and timings only)."""
    flush_interval: float = Field(1.0, gt=0.0, le=3600.0)
    """Seconds between writes; a crash loses at most the records of this last interval."""
    max_queue: int = Field(100_000, ge=1)
    """Records waiting beyond this are dropped (and counted)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


class TrafficWriter:
    """Writes traffic records to a Parquet dataset from a background thread.

    A record is a dict with some of `schema.FIELDS` (missing ones are null) where `time` is a Unix time
    in seconds; or a callable returning such a dict (or None), evaluated on the writer thread, so that a
    proxy can hand over raw response bytes and parse them off the request path.

    Args:
        root: The dataset: a folder (created) or a filesystem URI (`s3://bucket/prefix`).
        flush_interval: Seconds between writes.
        max_queue: Most records queued.
        keep_text: Keep `prompt_text` / `completion_text` (else they are nulled before writing).

    Raises:
        ConfigError: a URI that no filesystem can open, or an object store that refuses the credentials.
    """

    def __init__(self, root: Union[str, Path], flush_interval: float = 1.0, max_queue: int = 100_000,
                 keep_text: bool = False):
        self.root: DatasetRoot = open_root(root)
        self.keep_text = keep_text
        self._host, self._pid = _host(), os.getpid()
        self._writer_id = f"{self._host}-{self._pid}-{random.getrandbits(32):08x}"
        self._sequence = 0
        self._schema = arrow_schema()
        if self.root.local:
            Path(self.root.path).mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
        else:  # wrong credentials, endpoint or bucket: say so now, not in the log of every flush
            try:
                self.root.filesystem.get_file_info(self.root.path)
            except OSError as error:
                raise ConfigError(f"capture.path: cannot reach {self.root.display}: {error}") from None
        self.batcher = BackgroundBatcher("capture", self._write, flush_interval, max_batch=10_000,
                                         max_queue=max_queue, prepare=self._prepare)

    @classmethod
    def from_config(cls, config: CaptureConfig) -> Optional["TrafficWriter"]:
        """A writer for `config`, None when capture is disabled."""
        if not config.enabled:
            return None
        return cls(config.path, config.flush_interval, config.max_queue, config.text)

    @property
    def stats(self) -> BatcherStats:
        """Queued, written, dropped and failed records."""
        return self.batcher.stats

    def submit(self, record: Union[dict, Callable[[], Optional[dict]]]) -> bool:
        """Queue one record (non-blocking); False when it was dropped (queue full)."""
        return self.batcher.submit(record)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued now; True when it drained within `timeout` seconds."""
        return self.batcher.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer thread."""
        self.batcher.close(timeout)

    # ---------------------------------------------------------------------------- writer thread

    def _prepare(self, item: Any) -> Optional[dict]:
        record = item() if callable(item) else item
        return None if record is None else to_row(record, self.keep_text)

    def _write(self, rows: list[dict]) -> int:
        groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        for row in rows:
            groups[(row["time"].strftime("%Y-%m-%d"), partition_name(row["model_version"] or row["model"]))].append(row)
        failed = 0
        for (day, model), group in groups.items():
            table, bad = self._table(group)
            failed += bad
            if table is None:
                continue
            try:
                self._write_file(f"date={day}", f"model={model}", table)
            except Exception as error:  # this partition's file is lost; the others still get written
                failed += table.num_rows
                _log.warning("capture: writing %d record(s) to %s failed: %s", table.num_rows, self.root.display, error)
        return failed

    def _table(self, rows: list[dict]) -> tuple[Any, int]:
        """The rows as one Arrow table, and how many rows did not fit the schema (left out)."""
        import pyarrow as pa

        try:
            return pa.Table.from_pylist(rows, schema=self._schema), 0
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass  # find the malformed rows one by one; the common case above stays one call
        tables, bad = [], 0
        for row in rows:
            try:
                tables.append(pa.Table.from_pylist([row], schema=self._schema))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
                bad += 1
                _log.warning("capture: record %s does not fit the traffic schema, left out: %s",
                             row.get("request_id"), error)
        return (pa.concat_tables(tables) if tables else None), bad

    def _write_file(self, day: str, model: str, table: Any) -> None:
        import pyarrow.parquet as pq

        self._sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"part-{stamp}-{self._writer_id}-{self._sequence}.parquet"
        filesystem = self.root.filesystem
        if self.root.local:
            folder = Path(self.root.join(day, model))
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / (name + ".tmp")
            with open(temporary, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, folder / name)
            return
        final = self.root.join(day, model, name)
        if filesystem.type_name in _DIRECT_PUT:
            with filesystem.open_output_stream(final) as out:
                pq.write_table(table, out, compression="zstd")
            return
        filesystem.create_dir(self.root.join(day, model), recursive=True)
        with filesystem.open_output_stream(final + ".tmp") as out:
            pq.write_table(table, out, compression="zstd")
        filesystem.move(final + ".tmp", final)

    def _remove_stale_temporaries(self) -> None:
        """Delete `.tmp` files of crashed writers: this host's whose process is gone, anyone's after an hour."""
        now = time.time()
        for path in Path(self.root.path).glob("date=*/model=*/*.parquet.tmp"):
            match = _TEMPORARY.match(path.name)
            try:
                stale = now - path.stat().st_mtime > _STALE_SECONDS
                if not stale and match and match["host"] == self._host:
                    stale = not _alive(int(match["pid"]))
                if stale:
                    path.unlink()
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
