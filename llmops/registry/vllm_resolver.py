"""A vLLM LoRA resolver plugin: a `vllm serve` replica on any machine serves registry adapters by ref.

How a replica gets an adapter it has never seen (vLLM's own mechanism, no llmops process beside it):

1. The gateway sends the request with `model: "capitals/3"` (always an exact `NAME/VERSION`; an alias
   would be cached by vLLM under its name and never move).
2. vLLM does not know that name, so `OpenAIServingModels.resolve_lora` asks every registered
   `LoRAResolver` (vllm/entrypoints/openai/models/serving.py; needs
   `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`).
3. This resolver, registered through the `vllm.general_plugins` entry point that llmops ships
   (pyproject.toml), resolves the ref in the registry at `MLFLOW_TRACKING_URI`, fills the local
   artifact cache (`artifact_cache.py`: digest-checked, atomic, shared with every other llmops
   process on the host) and returns a `LoRARequest` with that folder. vLLM loads it and answers.

`resolve_registry_adapter` is the part without vLLM (tested against a real tracking server);
`register` is the entry point. It registers only when `VLLM_ALLOW_RUNTIME_LORA_UPDATING` is on and
`LLMOPS_VLLM_RESOLVER` is not `0`, and imports nothing heavy: vLLM calls it in every process.

Replica set-up (README "Team set-up"):

    pip install llmops 'vllm>=0.10'
    export MLFLOW_TRACKING_URI=http://mlflow.internal:5000 VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
    vllm serve /models/base --served-model-name base/1 --enable-lora --max-lora-rank 64
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from pathlib import Path
from typing import Any, Optional

__all__ = ["resolve_registry_adapter", "register", "RESOLVER_NAME"]

_log = logging.getLogger(__name__)
RESOLVER_NAME = "llmops registry"


@functools.lru_cache(maxsize=32)
def _folder_digest(path: str) -> Optional[str]:
    from llmops.registry.digest import tree_digest

    folder = Path(path)
    return tree_digest(folder) if (folder / "config.json").is_file() else None


def _base_matches(base: Any, served: str) -> bool:
    """Whether the replica's base model (`served`: vLLM's `model_config.model`) is the adapter's base:
    the same registry ref or source, or a local folder with the registered digest."""
    if served in (base.ref, base.name, base.source):
        return True
    if Path(served).is_dir():
        return base.digest is not None and _folder_digest(str(Path(served).resolve())) == base.digest
    return False


def resolve_registry_adapter(base_model_name: str, lora_name: str) -> Optional[Path]:
    """The local folder of registry adapter `lora_name` (`NAME/VERSION`) for a replica serving
    `base_model_name`, fetched through the artifact cache; None when it is not an adapter of that base
    in the registry (vLLM then answers 404, or tries its next resolver).

    Raises:
        RegistryError: the registry cannot be read, or the downloaded files fail their digest check
            (vLLM reports the adapter as found but not loadable).
    """
    from llmops.errors import LlmopsError, NotFoundError
    from llmops.registry.models import KIND_ADAPTER, resolve_model_ref
    from llmops.registry.refs import parse_ref

    try:
        ref = parse_ref(lora_name)
    except LlmopsError:
        return None
    if ref.version is None:
        _log.warning("llmops resolver: %r is not NAME/VERSION; send exact versions (the gateway does)", lora_name)
        return None
    try:
        version = resolve_model_ref(ref)
    except NotFoundError:
        return None
    if version.kind != KIND_ADAPTER or not version.base:
        _log.warning("llmops resolver: %s is a %s, not a LoRA adapter", version.ref, version.kind)
        return None
    base = resolve_model_ref(version.base)
    if not _base_matches(base, base_model_name):
        _log.warning("llmops resolver: %s was trained on %s (%s), but this replica serves %s",
                     version.ref, base.ref, base.source, base_model_name)
        return None
    return version.local_path()


def _resolver_class():
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class RegistryLoRAResolver(LoRAResolver):
        """Resolves `NAME/VERSION` through the llmops registry into the local artifact cache."""

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Optional[LoRARequest]:
            path = await asyncio.to_thread(resolve_registry_adapter, base_model_name, lora_name)
            if path is None:
                return None
            # vLLM replaces lora_int_id with its own counter (serving.py); any positive id will do.
            return LoRARequest(lora_name=lora_name, lora_int_id=abs(hash(lora_name)) or 1, lora_path=str(path))

    return RegistryLoRAResolver


def register() -> None:
    """The `vllm.general_plugins` entry point: register the resolver with vLLM's LoRAResolverRegistry."""
    if os.environ.get("LLMOPS_VLLM_RESOLVER", "1") == "0":
        return
    if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() not in ("1", "true"):
        return  # vLLM consults resolvers only with runtime LoRA updating on
    from vllm.lora.resolver import LoRAResolverRegistry

    if RESOLVER_NAME not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver(RESOLVER_NAME, _resolver_class()())
