"""What an input of a version holds now, against its record: a base's files, a dataset file.

Shared by `walk` (which shows it) and `reproduce` (which refuses to train when it differs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

__all__ = ["base_state", "dataset_state"]


def base_state(base: Any, recorded: Optional[str]) -> dict[str, Any]:
    """`state` of a base: `unchanged`, `changed`, `missing` or `not checked` (hub models), with the digest now."""
    from llmops.registry.digest import tree_digest

    if recorded and recorded.startswith("hub:"):
        return {"state": "not checked (a hub model is pinned by its revision)"}
    path = Path(base.source.removeprefix("file://"))
    if not path.exists():
        return {"state": "missing", "now": None}
    now = tree_digest(path)
    return {"state": "unchanged" if now == recorded else "changed", "now": now,
            "files": sum(1 for p in path.rglob("*") if p.is_file())}


def dataset_state(path: str, recorded_digest: Optional[str]) -> dict[str, Any]:
    """What the file at `path` holds now, against the recorded digest: state, digest, rows, bytes."""
    from llmops.registry.digest import file_digest

    file = Path(path)
    if not file.is_file():
        return {"state": "missing"}
    now = file_digest(file)
    with file.open("rb") as handle:
        rows = sum(1 for line in handle if line.strip())
    return {"state": "unchanged" if now == recorded_digest else "changed", "now": now, "rows_now": rows,
            "bytes_now": file.stat().st_size}
