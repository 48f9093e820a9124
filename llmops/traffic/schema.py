"""The traffic dataset's data contract: its columns, its Arrow schema and its partition layout.

One row per request (per-choice lists for `n > 1`), Hive-partitioned by day and model name:
`ROOT/date=YYYY-MM-DD/model=NAME/part-*.parquet`, which pyarrow, pandas, DuckDB and Spark read as is.

    time (timestamp[us, UTC]), request_id, key_id, endpoint, model (the requested ref),
    model_version (`NAME/VERSION`), prompt_ref, prompt_version (`NAME/VERSION` of a registry prompt,
    null without one), status, prompt_token_ids (list<int32>),
    completion_token_ids (list<list<int32>>, one per choice), finish_reasons (list<string>),
    prompt_tokens, completion_tokens, latency_ms, ttft_ms,
    prompt_text, completion_text (list<string>) -- text only with `capture.text: true`.

Token ids are null where the engine did not report them (an upstream that is not vLLM). Every column
is nullable; columns added later read as null from older files, so readers never break on old data.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any, Optional

__all__ = ["FIELDS", "TEXT_FIELDS", "arrow_schema", "partition_name", "to_row"]

FIELDS = ("time", "request_id", "key_id", "endpoint", "model", "model_version", "prompt_ref", "prompt_version",
          "status", "prompt_token_ids", "completion_token_ids", "finish_reasons", "prompt_tokens",
          "completion_tokens", "latency_ms", "ttft_ms", "prompt_text", "completion_text")
"""The columns, in file order."""

TEXT_FIELDS = ("prompt_text", "completion_text")
"""Columns kept only with `capture.text: true`."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SCHEMA: Any = None


def arrow_schema() -> Any:
    """The `pyarrow.Schema` of the dataset (built once)."""
    global _SCHEMA
    if _SCHEMA is None:
        import pyarrow as pa

        ids = pa.list_(pa.int32())
        _SCHEMA = pa.schema([
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
        assert tuple(_SCHEMA.names) == FIELDS
    return _SCHEMA


def partition_name(model: Optional[str]) -> str:
    """The `model=` partition of a model ref or version: its name, made safe for a path segment."""
    name = (model or "").split("/", 1)[0].split("@", 1)[0]
    return _UNSAFE.sub("_", name) or "_unknown"


def to_row(record: dict, keep_text: bool) -> dict:
    """A record (a dict with some of `FIELDS`, `time` in Unix seconds) as a row of the schema.

    Missing columns are null; text columns are nulled unless `keep_text`. Types are checked when the
    row is converted to Arrow (the writer counts a row that does not convert as failed).
    """
    row = {name: record.get(name) for name in FIELDS}
    stamp = record.get("time")
    row["time"] = dt.datetime.fromtimestamp(stamp if stamp is not None else time.time(), dt.timezone.utc)
    if not keep_text:
        for name in TEXT_FIELDS:
            row[name] = None
    return row
