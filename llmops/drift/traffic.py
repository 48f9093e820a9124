"""Drift of live traffic: the prompts the gateway captured for one model version, against reference data.

Captured prompts are token ids as the engine saw them, chat template included, so reference rows are
encoded the same way: chat messages (or a text rendered as one user message, or a registry prompt
rendered with the row's fields) through the base model's chat template with the generation prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmops.drift.inputs import DriftInputError
from llmops.jsonl import read_jsonl

__all__ = ["TrafficDocuments", "traffic_documents"]

_TEXT_FIELDS = ("text", "prompt", "question", "input", "query")


@dataclass
class TrafficDocuments:
    """Reference and captured token documents of one model version, with the tokenizer that made them."""

    reference: list[np.ndarray]
    current: list[np.ndarray]
    tokenizer: Any
    model_version: str
    records: int


def _reference_messages(row: dict[str, Any], prompt: Any, where: str) -> list[dict[str, str]]:
    if prompt is not None:
        rendered = prompt.render({v: row[v] for v in prompt.variables if v in row})
        return [{"role": "user", "content": rendered}] if isinstance(rendered, str) else rendered
    if isinstance(row.get("messages"), list):
        return [m for m in row["messages"] if m.get("role") != "assistant"]
    field = next((f for f in _TEXT_FIELDS if isinstance(row.get(f), str)), None)
    if field is None:
        raise DriftInputError(f"{where}: no messages or text field ({', '.join(_TEXT_FIELDS)}); pass --prompt NAME@ALIAS")
    return [{"role": "user", "content": row[field]}]


def traffic_documents(model: str, reference: str | Path, since: Optional[str] = "24h",
                      capture_root: str | Path = "traffic", prompt: Optional[str] = None) -> TrafficDocuments:
    """Load captured chat traffic of `model`'s current version and encode `reference` (JSONL) alike.

    `capture_root` is the gateway's `capture.path`: a folder or a URI (`s3://bucket/prefix`); every
    gateway's files in it are read.

    Raises:
        DriftInputError: no captured traffic, a reference row without text, an unknown ref.
    """
    from llmops import registry
    from llmops import traffic
    from llmops.drift.io import load_tokenizer
    from llmops.traffic.location import redact

    version = registry.resolve_model_ref(model)
    base = registry.resolve_model_ref(version.base) if version.base else version
    tokenizer = load_tokenizer(base.local_path())
    records = [r for r in traffic.read(model=version.name, since=since, root=capture_root)
               if r.get("model_version") == version.ref and r.get("prompt_token_ids") and "chat" in str(r.get("endpoint"))]
    if not records:
        raise DriftInputError(f"no captured chat traffic for {version.ref} since {since} under {redact(capture_root)} "
                              "(is `capture.enabled: true` in the gateway config?)")
    registry_prompt = registry.get_prompt(prompt) if prompt else None
    reference_docs = []
    for number, row in read_jsonl(reference, "reference", DriftInputError):
        messages = _reference_messages(row, registry_prompt, f"{reference}:{number}")
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        reference_docs.append(np.asarray(ids["input_ids"] if hasattr(ids, "keys") else ids, dtype=np.int64))
    current = [np.asarray(r["prompt_token_ids"], dtype=np.int64) for r in records]
    return TrafficDocuments(reference_docs, current, tokenizer, version.ref, len(records))
