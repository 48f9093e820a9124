"""Reading a traffic dataset back: every file of every gateway, filtered by model and time.

    from llmops import traffic
    traffic.read(model="capitals", since="24h", root="s3://bucket/traffic")   # list of dicts, oldest first

The day partitions before `since` are not listed or opened, so reading the last day of a long-lived
dataset stays cheap. Files written by older versions read with today's schema (new columns are null).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Optional, Union

from llmops.traffic.location import DatasetRoot, open_root
from llmops.traffic.schema import arrow_schema, partition_name

__all__ = ["read", "read_table", "since_time", "Since"]

Since = Union[None, float, dt.datetime, dt.timedelta, str]


def since_time(since: Since) -> Optional[dt.datetime]:
    """`since` as an aware UTC datetime: a datetime (naive = UTC), a Unix time, a timedelta back from now,
    a duration (`30m`, `24h`, `7d`) or an ISO timestamp; None stays None.

    Raises:
        ValueError: a string that is neither a duration nor an ISO timestamp.
    """
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
    try:
        return since_time(dt.datetime.fromisoformat(str(since)))
    except ValueError:
        raise ValueError(f"since: {since!r} is neither a duration (30m, 24h, 7d) nor an ISO timestamp") from None


def _children(root: DatasetRoot, path: str, prefix: str) -> list[str]:
    """Names of the sub-folders `prefix…` of `path` (none when `path` does not exist)."""
    from pyarrow import fs

    try:
        infos = root.filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(info.base_name for info in infos
                  if info.type == fs.FileType.Directory and info.base_name.startswith(prefix))


def _files(root: DatasetRoot, model: Optional[str], start: Optional[dt.datetime]) -> list[str]:
    from pyarrow import fs

    first_day = None if start is None else f"date={start.strftime('%Y-%m-%d')}"
    files = []
    for day in _children(root, root.path, "date="):
        if first_day is not None and day < first_day:
            continue
        models = [f"model={partition_name(model)}"] if model else _children(root, root.join(day), "model=")
        for name in models:
            selector = fs.FileSelector(root.join(day, name), allow_not_found=True)
            files.extend(info.path for info in root.filesystem.get_file_info(selector)
                         if info.type == fs.FileType.File and info.base_name.endswith(".parquet"))
    return sorted(files)


def read_table(model: Optional[str] = None, since: Since = None, root: Union[str, Path] = "traffic") -> Any:
    """Captured records as a `pyarrow.Table` (the columns of `schema.FIELDS`), oldest first.

    Args:
        model: A model name, or a ref whose name part is used (`capitals@production` -> `capitals`);
            None reads every model.
        since: Only records at or after this time (see `since_time`).
        root: The dataset: the gateway's `capture.path` (a folder or a URI such as `s3://bucket/prefix`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    schema = arrow_schema()
    opened = open_root(root)
    start = since_time(since)
    files = _files(opened, model, start)
    if not files:
        return schema.empty_table()
    dataset = ds.dataset(files, schema=schema, format="parquet", filesystem=opened.filesystem)
    condition = None if start is None else pc.field("time") >= pa.scalar(start, type=schema.field("time").type)
    table = dataset.to_table(filter=condition)
    if table.num_rows:
        table = table.take(pc.sort_indices(table, sort_keys=[("time", "ascending")]))
    return table


def read(model: Optional[str] = None, since: Since = None, root: Union[str, Path] = "traffic") -> list[dict]:
    """Captured records as a list of dicts (see `read_table` for the arguments), oldest first."""
    return read_table(model, since, root).to_pylist()
