"""Merge a registered LoRA adapter into its base weights, for engines that serve merged models.

The base comes from the adapter version's own lineage (`llmops.base`), never from a config, so an
adapter cannot be merged into a base it was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmops.finetune import FinetuneError

__all__ = ["MergeResult", "merge_adapter"]


@dataclass(frozen=True)
class MergeResult:
    out_dir: Path
    adapter_ref: str
    base_ref: str
    version: Optional[str] = None
    """`name/VERSION` of the registered merged model, when registered."""


def merge_adapter(
    ref: str,
    out_dir: str | Path,
    dtype: str = "float32",
    register_as: Optional[str] = None,
    alias: Optional[str] = None,
    overwrite: bool = False,
) -> MergeResult:
    """Merge adapter version `ref` into its base and save the full model (and tokenizer) in `out_dir`.

    Args:
        ref: adapter reference (`name`, `name@alias`, `name/VERSION`).
        out_dir: folder to write; must be empty or absent unless `overwrite`.
        dtype: dtype of the saved weights (`float32`, `bfloat16`, `float16`).
        register_as: register the merged model as a new version of this name (`kind: merged`).
        alias: alias to move to the registered merged version.

    Raises:
        FinetuneError: `ref` is not an adapter, the base is gone, or `out_dir` is not empty.
    """
    from llmops.registry import register_adapter, resolve_model_ref

    adapter = resolve_model_ref(ref)
    if adapter.kind != "adapter":
        raise FinetuneError(f"{adapter.ref} is a {adapter.kind} version; only adapter versions can be merged")
    if not adapter.base:
        raise FinetuneError(f"{adapter.ref} has no llmops.base tag; cannot tell which base it belongs to")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FinetuneError(f"{out_dir} exists and is not empty; choose another folder or pass --force")
    base = resolve_model_ref(adapter.base)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.errors import RegistryError
    from llmops.finetune.model import quiet_transformers

    quiet_transformers()

    try:
        base_source, revision = str(base.local_path()), None
    except RegistryError:
        base_source, revision = base.source, base.revision
    adapter_dir = adapter.local_path()
    model = AutoModelForCausalLM.from_pretrained(base_source, revision=revision, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_source
    AutoTokenizer.from_pretrained(tokenizer_source, revision=None if tokenizer_source == adapter_dir else revision).save_pretrained(out_dir)
    version = None
    if register_as:
        registered = register_adapter(
            register_as, out_dir, base=base.ref, alias=alias, kind="merged",
            tags={"llmops.merged_from": adapter.ref, "llmops.merged_from_digest": adapter.digest or "",
                  **{k: v for k, v in adapter.tags.items() if k in (
                      "llmops.dataset_digest", "llmops.config_digest", "llmops.prompt_version", "llmops.git_commit")}},
            description=f"{adapter.ref} merged into {base.ref}", reason=f"merged {adapter.ref}",
        )
        version = registered.ref
    return MergeResult(out_dir, adapter.ref, base.ref, version)
