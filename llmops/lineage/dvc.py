"""DVC-tracked datasets: recognise them, record their pointer, fetch a recorded version back.

A dataset file is DVC-tracked when a DVC repository (a folder holding `.dvc/`) above it has an output
that is or contains the file: a `.dvc` pointer written by `dvc add`, or a stage output recorded in
`dvc.lock`. Everything goes through DVC's Python API (`dvc.repo.Repo`, `dvc.api.read`), not its CLI;
`dvc` is the extra `llmops[dvc]` and is imported only when a DVC repository is found.

    found = find_dvc_dataset("data/train.jsonl")     # None when not tracked
    path, how = materialise(found, Path("out/data"))  # the recorded bytes, from the workspace, cache or remote
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional

from llmops.lineage import LineageError

__all__ = ["DvcDataset", "WorkspaceEdited", "dvc_repo_root", "find_dvc_dataset", "materialise", "md5_of"]

_log = logging.getLogger(__name__)
_FIELDS = ("repo", "path", "md5", "file_md5", "pointer", "remote", "rev")


class WorkspaceEdited(LineageError):
    """The workspace copy of a DVC-tracked file was edited after its pointer was written."""


@dataclass(frozen=True)
class DvcDataset:
    """Where a DVC-tracked file comes from, as recorded in a model version's lineage tags."""

    repo: str
    """Root of the DVC repository (absolute)."""
    path: str
    """The file, relative to the repository root."""
    md5: str
    """DVC's hash of the tracked output (the file's md5, or `<md5>.dir` for a tracked folder)."""
    file_md5: str
    """md5 of the file itself (equal to `md5` when the output is the file)."""
    pointer: str
    """The file that pins the version, relative to the root: `x.dvc`, or `dvc.lock` for a stage output."""
    remote: Optional[str] = None
    """The default remote as `name url` (where `dvc push` put the content)."""
    rev: Optional[str] = None
    """The Git commit whose pointer names this version; None when the pointer was not committed."""

    @property
    def local_file(self) -> Path:
        return Path(self.repo) / self.path

    def tags(self, prefix: str) -> dict[str, str]:
        """Lineage tags `<prefix>.dvc.<field>` (empty fields left out)."""
        return {f"{prefix}.dvc.{key}": value for key, value in asdict(self).items() if value}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], prefix: str) -> Optional["DvcDataset"]:
        """The record written by `tags`, or None when the dataset was not DVC-tracked."""
        values = {key: tags.get(f"{prefix}.dvc.{key}") for key in _FIELDS}
        if not all(values[key] for key in ("repo", "path", "md5", "file_md5", "pointer")):
            return None
        return cls(**values)


def md5_of(path: Path) -> str:
    """md5 of a file's bytes, as DVC 3 records it for a file output."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_repo_root(path: str | Path) -> Optional[Path]:
    """The nearest folder above `path` that holds a `.dvc/` folder (checked without importing dvc)."""
    for folder in Path(path).resolve().parents:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _require_dvc():
    from llmops.extras import require

    return require("dvc", "DVC-tracked datasets")


def _committed_rev(root: Path, pointer: str) -> Optional[str]:
    """HEAD when the pointer file is committed there unchanged, else None."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", pointer],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or status.returncode != 0 or status.stdout.strip():
        return None
    return head.stdout.strip() or None


def find_dvc_dataset(path: str | Path) -> Optional[DvcDataset]:
    """The DVC record of `path`, or None when no DVC repository tracks it.

    Raises:
        MissingExtraError: the file is inside a DVC repository but `dvc` is not installed.
    """
    path = Path(path).resolve()
    root = dvc_repo_root(path)
    if root is None:
        return None
    _require_dvc()
    from dvc.exceptions import OutputNotFoundError
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        try:
            outs = repo.find_outs_by_path(str(path), strict=False)
        except OutputNotFoundError:
            return None
        out = outs[0]
        stage_path = Path(out.stage.path)
        pointer = stage_path.with_name("dvc.lock") if stage_path.name == "dvc.yaml" else stage_path
        pointer_rel = pointer.relative_to(root).as_posix()
        remote_name = out.remote or repo.config["core"].get("remote")
        remote = None
        if remote_name:
            url = repo.config["remote"].get(remote_name, {}).get("url")
            remote = f"{remote_name} {url}" if url else remote_name
        md5 = out.hash_info.value if out.hash_info else None
    if not md5:
        return None  # declared as an output but never computed (`dvc repro` not run yet)
    file_md5 = md5_of(path) if path.is_file() else ""
    return DvcDataset(str(root), path.relative_to(root).as_posix(), md5, file_md5, pointer_rel, remote,
                      _committed_rev(root, pointer_rel))


def _current_md5(dataset: DvcDataset) -> Optional[str]:
    """The md5 the workspace pointer names now (None when it no longer tracks the file)."""
    try:
        now = find_dvc_dataset(dataset.local_file)
    except Exception as error:  # a broken pointer file must not hide the recorded one
        _log.warning("reading the DVC pointer of %s failed: %s", dataset.local_file, error)
        return None
    return now.md5 if now else None


def _pull(dataset: DvcDataset) -> None:
    from dvc.repo import Repo

    with Repo(dataset.repo) as repo:
        repo.pull(targets=[str(Path(dataset.repo) / dataset.pointer)] if dataset.pointer.endswith(".dvc")
                  else [dataset.path])


def _read_at_rev(dataset: DvcDataset, dest: Path) -> Path:
    import dvc.api

    content = dvc.api.read(dataset.path, repo=dataset.repo, rev=dataset.rev, mode="rb")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(dataset.path).name
    target.write_bytes(content)
    return target


def materialise(dataset: DvcDataset, dest: Path) -> tuple[Path, str]:
    """A local file holding exactly the recorded version, and how it was obtained.

    The workspace copy when it still holds the recorded bytes; when it is missing and the workspace
    pointer still names the recorded version, `dvc pull` of that pointer (cache, else remote); when the
    workspace has moved on to another committed version, `dvc.api.read` at the recorded Git revision
    into `dest`.

    Raises:
        WorkspaceEdited: the workspace copy was edited in place (its pointer still names the recorded version).
        LineageError: DVC cannot deliver the recorded
            version (nothing in the cache or the remote, no recorded revision).
    """
    _require_dvc()
    from dvc.exceptions import DvcException

    local = dataset.local_file
    where = f"{local} (DVC md5 {dataset.md5}, pointer {dataset.pointer})"
    if local.is_file() and md5_of(local) == dataset.file_md5:
        return local, "the workspace copy"
    pointer_md5 = _current_md5(dataset)
    attempts: list[str] = []
    if local.is_file() and pointer_md5 == dataset.md5:
        # The pointer still names the recorded version, so the copy was edited in place.
        raise WorkspaceEdited(
            f"{local} was edited since it was recorded: it now has md5 {md5_of(local)}, the pointer "
            f"{dataset.pointer} and the lineage name md5 {dataset.file_md5}; restore it with "
            f"`dvc checkout {dataset.pointer}` (or `dvc add` and retrain to make a new version)"
        )
    if not local.exists() and pointer_md5 == dataset.md5:
        try:
            _pull(dataset)
            if local.is_file() and md5_of(local) == dataset.file_md5:
                return local, f"dvc pull from remote {dataset.remote or '(default)'}"
            attempts.append("dvc pull restored different bytes")
        except DvcException as error:
            attempts.append(f"dvc pull failed: {error}")
    if dataset.rev:
        try:
            fetched = _read_at_rev(dataset, dest)
            if md5_of(fetched) == dataset.file_md5:
                return fetched, f"dvc.api.read at revision {dataset.rev[:12]}"
            fetched.unlink()
            attempts.append(f"revision {dataset.rev[:12]} holds other bytes")
        except (DvcException, OSError) as error:
            attempts.append(f"dvc.api.read at revision {dataset.rev[:12]} failed: {error}")
    else:
        attempts.append("the pointer was not committed to Git when the version was trained, so no revision holds it")
    raise LineageError(f"cannot fetch the recorded version of {where} through DVC: " + "; ".join(attempts))
