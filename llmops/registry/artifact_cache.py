"""The one local cache of registry artifacts (adapters, merged models), keyed by version and digest.

Every engine, fine-tune and vLLM replica that starts from a registry artifact reads it through
`cached_artifact`, so a remote store (`mlflow-artifacts:/…` through a tracking server, `s3://…`) is
downloaded once per machine:

    <cache root>/<name>/<version>/<sha256 of the files>/     the files, complete and verified

- **keyed by version and digest**: the digest is the version's `llmops.digest` tag, so a version
  re-created under the same number (a deleted and re-registered model) never reads stale files;
- **filled atomically**: files are downloaded into a temporary folder beside the entry, checked
  against the digest, then renamed into place; an entry that exists is complete;
- **safe for several processes**: fillers of one entry take an exclusive `flock` on `<entry>.lock`
  (the second waits and then finds the entry), and the rename decides should locks be unavailable.

The root is `LLMOPS_CACHE_DIR`, else `$XDG_CACHE_HOME/llmops/artifacts` (`~/.cache/llmops/artifacts`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from llmops.errors import RegistryError

__all__ = ["cache_root", "cache_entry", "cached_artifact"]


def cache_root() -> Path:
    """The cache folder: `LLMOPS_CACHE_DIR`, else `$XDG_CACHE_HOME/llmops/artifacts`."""
    if os.environ.get("LLMOPS_CACHE_DIR"):
        return Path(os.environ["LLMOPS_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llmops" / "artifacts"


def cache_entry(name: str, version: int, digest: str) -> Path:
    """Where the files of `name/version` with content `digest` (`sha256:…`) live in the cache."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not hexdigest.isalnum():
        raise RegistryError(f"{name}/{version}: digest {digest!r} is not sha256:<hex>; re-register the version")
    return cache_root() / name / str(int(version)) / hexdigest


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between processes (`flock`); a no-op where the file system has none."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):  # Windows or a file system without locks: the rename decides
            pass
        yield


def cached_artifact(name: str, version: int, digest: str, download: Callable[[Path], None],
                    verify: Optional[Callable[[Path], str]] = None) -> Path:
    """The local folder holding `name/version`, filling the cache entry with `download(folder)` once.

    Args:
        download: writes the version's files into the (empty, temporary) folder it is given.
        verify: computes the digest of a folder (default `registry.digest.tree_digest`); the download
            must match `digest`, or nothing enters the cache.

    Raises:
        RegistryError: the downloaded files do not match the registered digest.
    """
    from llmops.registry.digest import tree_digest

    entry = cache_entry(name, version, digest)
    if entry.is_dir():
        return entry
    with _exclusive(entry.parent / f"{entry.name}.lock"):
        if entry.is_dir():  # another process filled it while this one waited
            return entry
        temporary = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".partial", dir=entry.parent))
        try:
            download(temporary)
            found = (verify or tree_digest)(temporary)
            if found != digest:
                raise RegistryError(
                    f"{name}/{version}: the downloaded files have digest {found}, but the registry records "
                    f"{digest}; the artifacts were changed after registration")
            try:
                os.rename(temporary, entry)
            except OSError:
                if not entry.is_dir():  # a process without the lock won the race: its files are the same
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return entry
