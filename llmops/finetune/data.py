"""Training data: read JSONL, format rows (chat messages, prompt/completion, or through a template),
tokenize with the trained tokens marked, and fingerprint the result.

Row formats (one JSON object per line):

- `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}`
- `{"prompt": ..., "completion": ...}` (`prompt` may also be a list of messages)
- any fields, formatted by `data.template` (inline Jinja) or `data.prompt` (a registry prompt):
  the fields are the template's variables and `data.completion_field` holds the answer.

Every example keeps `labels` aligned with `input_ids`: the token id where the token is trained,
-100 where it is not. The end-of-turn token closing a trained turn is trained, so the model learns
to stop.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from llmops.finetune import FinetuneError
from llmops.jsonl import read_jsonl as _read_jsonl
from llmops.finetune.schema import DataSection

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "TokenizedData",
    "Formatter",
    "read_jsonl",
    "make_formatter",
    "tokenize_rows",
    "load_split",
]

IGNORE_INDEX = -100
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")  # not `add_generation_prompt`, which every template has


@dataclass
class Example:
    """One tokenized example."""

    input_ids: list[int]
    labels: list[int]
    """Aligned with `input_ids`: the id where trained, -100 elsewhere (not yet shifted)."""
    line: int
    """Line of the JSONL file it came from (1-based)."""
    truncated: bool = False

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class TokenizedData:
    """A tokenized split with the numbers `--preview` and the fingerprint report."""

    path: Path
    examples: list[Example]
    rows: int
    truncated: int = 0
    dropped: int = 0
    """Examples left with no trained token (after truncation); they are not trained on."""
    file_digest: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(e.length for e in self.examples)

    @property
    def trained_tokens(self) -> int:
        return sum(e.trained_tokens for e in self.examples)


def read_jsonl(path: Path, key: str) -> list[tuple[int, dict[str, Any]]]:
    """Read the JSON objects of a JSONL file with their line numbers (see `llmops.jsonl.read_jsonl`).

    Raises:
        FinetuneError: naming the file, the line and the config key.
    """
    return _read_jsonl(path, key, FinetuneError)


# ------------------------------------------------------------------------------------------ formatting


@dataclass(frozen=True)
class Formatter:
    """Turns a row into `messages` (chat) or a (prompt, completion) pair."""

    template: Any = None
    """A text or chat template (from `data.template` or the registry prompt), or None for plain rows."""
    completion_field: str = "completion"
    prompt_ref: Optional[str] = None
    """`name/VERSION` of the registry prompt used, for lineage."""

    @property
    def prompt_version(self) -> str:
        """What the `llmops.prompt_version` tag records: the registry version, `inline:<digest>` or `none`."""
        if self.prompt_ref:
            return self.prompt_ref
        if self.template is not None:
            return "inline:" + hashlib.sha256(json.dumps(self.template, sort_keys=True).encode()).hexdigest()[:16]
        return "none"


def make_formatter(data: DataSection) -> Formatter:
    """The formatter for `data`; resolves `data.prompt` in the registry.

    Raises:
        FinetuneError: `data.prompt` names no prompt in the registry.
    """
    if data.prompt is not None:
        from llmops.errors import RegistryError
        from llmops.registry import get_prompt

        try:
            prompt = get_prompt(data.prompt)
        except RegistryError as error:
            raise FinetuneError(f"data.prompt: {error}") from None
        return Formatter(prompt.template, data.completion_field, prompt.ref)
    if data.template is not None:
        template = data.template if isinstance(data.template, str) else [m.model_dump() for m in data.template]
        return Formatter(template, data.completion_field)
    return Formatter(None, data.completion_field)


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise FinetuneError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise FinetuneError(f"{where}: messages[{index}] needs a string `role` and a string `content`")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _format_row(row: dict[str, Any], formatter: Formatter, where: str) -> tuple[Optional[list], Any, Optional[str]]:
    """(messages, None, None) for chat rows, (None, prompt, completion) for prompt/completion rows."""
    from llmops.errors import PromptRenderError
    from llmops.registry.prompts import render_template, template_variables

    if formatter.template is not None:
        field_name = formatter.completion_field
        if field_name not in row:
            raise FinetuneError(
                f"{where}: no field {field_name!r} (data.completion_field) holding the answer; "
                f"the row has {', '.join(sorted(row)) or 'no fields'}"
            )
        names = template_variables(formatter.template)
        variables = {name: row[name] for name in names if name in row}
        try:
            prompt = render_template(formatter.template, variables, where=f"{where}: template")
        except PromptRenderError as error:
            raise FinetuneError(f"{error} (the row has {', '.join(sorted(row))})") from None
        return None, prompt, str(row[field_name])
    if "messages" in row:
        return _check_messages(row["messages"], where), None, None
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):
            prompt = _check_messages(prompt, where)
        elif not isinstance(prompt, str):
            raise FinetuneError(f"{where}: `prompt` must be a string or a list of messages")
        if not isinstance(completion, str):
            raise FinetuneError(f"{where}: `completion` must be a string")
        return None, prompt, completion
    raise FinetuneError(
        f"{where}: an example needs `messages`, or `prompt` and `completion` "
        f"(the row has {', '.join(sorted(row)) or 'no fields'}); to use other fields set data.template or data.prompt"
    )


# ---------------------------------------------------------------------------------------- tokenization


def _spans_from_mask(mask: Sequence[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for index, flag in enumerate(list(mask) + [0]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            spans.append((start, index))
            start = None
    return spans


def _chat_ids_and_spans(tokenizer: Any, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a conversation and the spans of its assistant turns (end-of-turn token included)."""
    template = tokenizer.chat_template or ""
    try:
        if _GENERATION_TAG.search(template):
            out = tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            return list(out["input_ids"]), _spans_from_mask(out["assistant_masks"])
        # No {% generation %} marks: find each assistant turn by rendering the prefix before it.
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(messages[:index], tokenize=True, return_dict=True, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: index + 1], tokenize=True, return_dict=True)
            spans.append((len(before["input_ids"]), len(upto["input_ids"])))
        return ids, spans
    except FinetuneError:
        raise
    except Exception as error:  # jinja raise_exception in the template, unknown roles, ...
        raise FinetuneError(f"{where}: the chat template rejected this example: {error}") from None


def _tokenize_one(
    tokenizer: Any, row: dict[str, Any], formatter: Formatter, data: DataSection, chat: bool, where: str
) -> tuple[list[int], list[int]]:
    messages, prompt, completion = _format_row(row, formatter, where)
    if chat:
        if messages is None:
            prompt_messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            messages = [*prompt_messages, {"role": "assistant", "content": completion}]
        ids, spans = _chat_ids_and_spans(tokenizer, messages, where)
        if data.loss_on == "all":
            trained = [(0, len(ids))]
        elif not spans:
            raise FinetuneError(f"{where}: no assistant turn to train on (data.loss_on: {data.loss_on})")
        else:
            trained = spans[-1:] if data.loss_on == "completion" else spans
    else:
        if messages is not None or isinstance(prompt, list):
            raise FinetuneError(
                f"{where}: chat messages need a chat template, but data.format is text "
                "(or the tokenizer has none); set data.format: chat with a tokenizer that has a template"
            )
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = prompt_ids + completion_ids + eos
        trained = [(0, len(ids))] if data.loss_on == "all" else [(len(prompt_ids), len(ids))]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in trained:
        labels[start:end] = ids[start:end]
    return ids, labels


def uses_chat(tokenizer: Any, data: DataSection) -> bool:
    """Whether examples go through the chat template (`data.format`).

    Raises:
        FinetuneError: `data.format: chat` with a tokenizer that has no chat template.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if data.format == "chat" and not has_template:
        raise FinetuneError("data.format: chat, but the base model's tokenizer has no chat template; use data.format: text")
    return data.format == "chat" or (data.format == "auto" and has_template)


def tokenize_rows(
    rows: list[tuple[int, dict[str, Any]]], path: Path, key: str, tokenizer: Any, formatter: Formatter, data: DataSection
) -> TokenizedData:
    """Tokenize rows into examples, truncating to `data.max_seq_len`.

    Raises:
        FinetuneError: a row lacks the required fields or cannot be rendered (file and line named).
    """
    chat = uses_chat(tokenizer, data)
    examples, truncated, dropped = [], 0, 0
    for line, row in rows:
        ids, labels = _tokenize_one(tokenizer, row, formatter, data, chat, f"{path}:{line}: {key}")
        cut = len(ids) > data.max_seq_len
        if cut:
            truncated += 1
            ids, labels = ids[: data.max_seq_len], labels[: data.max_seq_len]
        example = Example(ids, labels, line, cut)
        if example.trained_tokens == 0:
            dropped += 1
            continue
        examples.append(example)
    if not examples:
        raise FinetuneError(
            f"{path}: {key}: no example has a trained token left after truncation to data.max_seq_len={data.max_seq_len}"
        )
    return TokenizedData(path, examples, len(rows), truncated, dropped)


def _tokenized_digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.input_ids, example.labels], separators=(",", ":")).encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def load_split(path: Path, key: str, tokenizer: Any, formatter: Formatter, data: DataSection) -> TokenizedData:
    """Read, format and tokenize one split, with its fingerprint (file digest, counts, token digest)."""
    from llmops.registry.digest import file_digest

    rows = read_jsonl(path, key)
    split = tokenize_rows(rows, path, key, tokenizer, formatter, data)
    split.file_digest = file_digest(path)
    lengths = [e.length for e in split.examples]
    split.fingerprint = {
        "file": str(path),
        "file_digest": split.file_digest,
        "rows": split.rows,
        "examples": len(split.examples),
        "tokens": split.tokens,
        "trained_tokens": split.trained_tokens,
        "min_len": min(lengths),
        "max_len": max(lengths),
        "truncated": split.truncated,
        "dropped": split.dropped,
        "tokenized_digest": _tokenized_digest(split.examples),
    }
    return split
