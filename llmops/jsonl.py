"""Reading JSONL datasets with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path, key: str, error: type[LlmopsError] = LlmopsError) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL file with their line numbers (blank lines are skipped).

    Args:
        path: the file.
        key: what the file is to the user (a config key such as `data.train`), named in messages.
        error: the domain's error type to raise.

    Raises:
        `error`: the file cannot be read, a line is not a JSON object, or there are no rows.
    """
    path = Path(path)
    rows = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as problem:
        raise error(f"{path}: {key}: cannot read: {problem.strerror or problem}") from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as problem:
                raise error(f"{path}:{number}: {key}: not valid JSON ({problem.msg} at column {problem.colno})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{number}: {key}: expected a JSON object, got {type(row).__name__}")
            rows.append((number, row))
    if not rows:
        raise error(f"{path}: {key}: the dataset is empty (no JSON lines); add examples or point {key} at another file")
    return rows
