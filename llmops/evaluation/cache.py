"""The on-disk response cache: an unchanged rerun of a suite sends no request.

Keyed by everything that can change an answer: the model version and its digests, the prompt
version and the rendered prompt, the generation parameters, the repeat index. Entries keep the
latency and token counts of the original generation; a cache hit never overwrites them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Optional

from llmops.registry.digest import json_digest

__all__ = ["ResponseCache", "default_cache_path", "cache_key"]


def default_cache_path() -> Path:
    """`$LLMOPS_CACHE_DIR/eval.sqlite`, else `.llmops/cache/eval.sqlite` in the working directory."""
    root = Path(os.environ.get("LLMOPS_CACHE_DIR") or Path.cwd() / ".llmops" / "cache")
    return root / "eval.sqlite"


def cache_key(**parts: Any) -> str:
    """A stable key over the named parts (order-independent)."""
    return json_digest(parts)


class ResponseCache:
    """A tiny SQLite key-value store, safe to use from one process's threads."""

    def __init__(self, path: Optional[Path] = None):
        self.path = path or default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> Optional[dict[str, Any]]:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            # INSERT OR IGNORE: the first generation's latency and tokens stay the record.
            self._db.execute("INSERT OR IGNORE INTO responses VALUES (?, ?)", (key, json.dumps(value)))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
