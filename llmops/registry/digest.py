"""Content digests for lineage tags: a base model's files, a dataset, a resolved config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["file_digest", "tree_digest", "json_digest"]

_FULL_HASH_LIMIT = 256 * 1024 * 1024
_EDGE = 16 * 1024 * 1024


def file_digest(path: str | Path) -> str:
    """sha256 of a file. Files over 256 MiB are fingerprinted by size and their first and last 16 MiB,
    so registering a multi-GB base stays quick; a changed safetensors header or tail still shows."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f"size={size}".encode())
            digest.update(handle.read(_EDGE))
            handle.seek(size - _EDGE)
            digest.update(handle.read(_EDGE))
    return "sha256:" + digest.hexdigest()


def tree_digest(path: str | Path) -> str:
    """Digest of a file, or of every file under a folder (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_digest(file).encode())
    return "sha256:" + digest.hexdigest()


def json_digest(data: Any) -> str:
    """Digest of JSON-serialisable data in canonical form (sorted keys)."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
