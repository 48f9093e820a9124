"""Engines that generate tokens for the gateway, behind the `Engine` Protocol of `base.py`."""

from __future__ import annotations

from typing import Any, Callable, Optional

from llmops.gateway.engines.base import Engine, GenerationRequest, SamplingParams, TokenEvent

__all__ = ["Engine", "GenerationRequest", "SamplingParams", "TokenEvent", "create_engine_factory"]


def create_engine_factory(config: Any) -> Callable[[str, Optional[str]], Engine]:
    """`(source, revision) -> Engine` for an `EngineConfig`; heavy imports happen on the first call."""
    if config.kind != "transformers":  # the config schema admits only implemented kinds
        raise ValueError(f"unknown engine kind {config.kind!r}")

    def make(source: str, revision: Optional[str] = None) -> Engine:
        from llmops.gateway.engines.transformers import TransformersEngine

        return TransformersEngine(source, device=config.device, dtype=config.dtype,
                                  max_batch_size=config.max_batch_size,
                                  max_loaded_adapters=config.max_loaded_adapters, revision=revision)

    return make
