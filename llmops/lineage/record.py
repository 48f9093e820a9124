"""What a fine-tune records about its data for lineage: one set of tags per split, read back by `walk`.

    llmops.data.train.path            /abs/path/train.jsonl
    llmops.data.train.digest          sha256:...   (the file's bytes; the same digest `reproduce` checks)
    llmops.data.train.rows            200
    llmops.data.train.dvc.md5         071770ae...  (only when DVC tracks the file; see `dvc.DvcDataset`)
    llmops.data.train.dvc.pointer     data/train.jsonl.dvc
    llmops.data.train.dvc.remote      storage /mnt/dvc-remote
    llmops.data.train.dvc.rev         <git commit of the pointer>
    ...

The full fingerprint (tokens, tokenized digest) is the run artifact `dataset.json`; the tags make the
essentials visible and searchable in MLflow's UI without downloading it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

__all__ = ["SPLITS", "dataset_lineage_tags", "file_lineage_tags", "split_prefix"]

SPLITS = ("train", "eval")
_log = logging.getLogger(__name__)


def split_prefix(split: str) -> str:
    """The tag prefix of a data split: `llmops.data.train`."""
    return f"llmops.data.{split}"


def file_lineage_tags(path: str, prefix: str, digest: str | None = None, rows: Any = None) -> dict[str, str]:
    """`<prefix>.path`, `.digest`, `.rows` and, when DVC tracks the file, `<prefix>.dvc.*`.

    Never raises: a DVC repository that cannot be read is logged and left out, because losing a
    trained adapter (or an eval run) over a lineage detail would be worse than a missing pointer.
    """
    from llmops.lineage.dvc import find_dvc_dataset
    from llmops.registry.digest import file_digest

    tags = {f"{prefix}.path": str(path)}
    if digest is None and Path(path).is_file():
        digest = file_digest(path)
    if digest:
        tags[f"{prefix}.digest"] = str(digest)
    if rows is not None:
        tags[f"{prefix}.rows"] = str(rows)
    try:
        tracked = find_dvc_dataset(path)
    except Exception as error:
        _log.warning("could not read the DVC record of %s (lineage left without it): %s", path, error)
        return tags
    if tracked is not None:
        tags.update(tracked.tags(prefix))
    return tags


def dataset_lineage_tags(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    """Lineage tags for the splits of a fine-tune's data fingerprint (`PreparedData.fingerprint`); never raises."""
    tags: dict[str, str] = {}
    for split in SPLITS:
        split_print = fingerprint.get(split)
        if not isinstance(split_print, Mapping) or not split_print.get("file"):
            continue
        tags.update(file_lineage_tags(str(split_print["file"]), split_prefix(split),
                                      split_print.get("file_digest") or None, split_print.get("rows")))
    return tags
