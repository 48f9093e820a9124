"""The base model and its LoRA adapter: resolve `model.base`, load tokenizer and weights, wrap with peft."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmops.finetune import FinetuneError
from llmops.finetune.schema import FinetuneConfig

__all__ = [
    "quiet_transformers", "BaseModelRef", "resolve_base", "load_tokenizer", "load_model", "add_adapter", "weights_dtype",
    "resolve_attention",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def quiet_transformers() -> None:
    """No per-file progress bars or deprecation chatter from transformers/peft under our own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@dataclass(frozen=True)
class BaseModelRef:
    """Where the base weights come from, and the registry version they are (if any)."""

    load_from: str
    """Local folder or hub id passed to `from_pretrained`."""
    revision: Optional[str] = None
    registry_ref: Optional[str] = None
    """`name/VERSION` when `model.base` named a registry model."""
    digest: Optional[str] = None


def resolve_base(config: FinetuneConfig, where: str = "model.base", need_registry: bool = False) -> BaseModelRef:
    """Resolve `model.base`: an absolute folder (the schema resolved relative ones), a registry ref, or a hub id.

    Args:
        where: how to name the key in messages (`file:line: model.base`).
        need_registry: the adapter will be registered, which needs the base in the registry.

    Raises:
        FinetuneError: the reference names nothing, names an adapter, or the base is not in the
            registry while `need_registry`.
    """
    base = config.model.base
    if Path(base).is_absolute():
        if need_registry:
            raise FinetuneError(
                f"{where}: {base} is a folder, but registering the adapter needs the base in the registry: "
                f"run `llmops models register-base NAME {base}` and set model.base: NAME (or register.enabled=false)"
            )
        return BaseModelRef(base, config.model.revision)
    from llmops.errors import NotFoundError, RegistryError
    from llmops.registry import resolve_model_ref

    try:
        version = resolve_model_ref(base)
    except NotFoundError as error:
        if _HUB_ID.match(base) and not need_registry:
            return BaseModelRef(base, config.model.revision)
        hint = ""
        if _HUB_ID.match(base):
            hint = (f"; to train on the hub model, register it first: `llmops models register-base NAME {base} "
                    "--revision REV` and set model.base: NAME")
        raise FinetuneError(f"{where}: {error}{hint}") from None
    except RegistryError as error:
        raise FinetuneError(f"{where}: {error}") from None
    if version.kind != "base":
        raise FinetuneError(
            f"{where}: {version.ref} is a {version.kind} version, not a base model; train on its base ({version.base})"
        )
    try:
        load_from = str(version.local_path())
    except RegistryError:  # a hub id: transformers loads it with the pinned revision
        load_from = version.source
    return BaseModelRef(load_from, version.revision, version.ref, version.digest)


def load_tokenizer(base: BaseModelRef, config: FinetuneConfig, where: str = "model.base"):
    """The base model's tokenizer, with a pad token (EOS when it has none).

    Raises:
        FinetuneError: the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            base.load_from, revision=base.revision, trust_remote_code=config.model.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise FinetuneError(f"{where}: cannot load the tokenizer of {base.load_from}: {error}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def weights_dtype(config: FinetuneConfig, cuda: bool):
    """The torch dtype of the base weights: `model.dtype`, `auto` = bfloat16 on a GPU that has it, else float32.

    Raises:
        FinetuneError: float16/bfloat16 requested on CPU (training in them on CPU is slow or unsupported).
    """
    import torch

    name = config.model.dtype
    if name == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if not cuda and name != "float32":
        raise FinetuneError(f"model.dtype: {name} needs a GPU; use auto or float32 on CPU")
    return getattr(torch, name)


_FLASH_MODULES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def resolve_attention(requested: str, cuda: bool) -> tuple[str, str]:
    """The attention implementation a run uses for `model.attn_implementation`, and why.

    `auto` is `flash_attention_2` when flash-attn is importable and a GPU is present, else `sdpa`
    (PyTorch's fused attention, always available). FlashAttention asked for by name must be importable.

    Returns:
        (implementation, reason), e.g. `("sdpa", "auto: flash-attn is not importable")`.

    Raises:
        FinetuneError: FlashAttention requested by name but not installed.
    """
    from llmops import extras

    if requested == "auto":
        if not extras.has_flash_attn(2):
            return "sdpa", "auto: flash-attn is not importable"
        if not cuda:
            return "sdpa", "auto: flash-attn is importable but no GPU is visible"
        return "flash_attention_2", "auto: flash-attn is importable"
    module = _FLASH_MODULES.get(requested)
    if module and not extras.has_module(module):
        raise FinetuneError(
            f"model.attn_implementation: {requested} needs the {module} package, which is not importable here: "
            f"run `{extras.install_hint(module)}`, or set model.attn_implementation to auto or sdpa"
        )
    return requested, "as configured"


def load_model(base: BaseModelRef, config: FinetuneConfig, dtype: Any, where: str = "model.base", attention: str = "sdpa"):
    """The base causal LM with `attention` (see `resolve_attention`), and gradient checkpointing when configured.

    Raises:
        FinetuneError: the weights cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            base.load_from,
            revision=base.revision,
            dtype=dtype,
            attn_implementation=attention,
            trust_remote_code=config.model.trust_remote_code,
        )
    except (OSError, ValueError, ImportError) as error:
        raise FinetuneError(f"{where}: cannot load {base.load_from}: {error}") from None
    model.config.use_cache = False
    if config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def add_adapter(model: Any, config: FinetuneConfig, seed: int, keep_adapter_fp32: bool = True):
    """Wrap `model` with a fresh LoRA adapter, initialised from `seed` (same on every process)."""
    import torch
    from peft import LoraConfig, get_peft_model

    adapter = config.adapter
    lora = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        modules_to_save=adapter.modules_to_save or None,
        use_rslora=adapter.rslora,
        use_dora=adapter.dora,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, lora, autocast_adapter_dtype=keep_adapter_fp32)
        except ValueError as error:  # target modules not found, ...
            raise FinetuneError(f"adapter: {error}") from None
