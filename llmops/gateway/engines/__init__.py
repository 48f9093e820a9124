"""Engines that generate tokens for the gateway, behind the `Engine` Protocol of `base.py`."""

from __future__ import annotations

from typing import Any, Callable, Optional

from llmops.gateway.engines.base import Engine, GenerationRequest, SamplingParams, TokenEvent

__all__ = ["Engine", "GenerationRequest", "SamplingParams", "TokenEvent", "create_engine_factory"]


def create_engine_factory(config: Any) -> Callable[[str, Optional[str]], Engine]:
    """`(source, revision) -> Engine` for an `EngineConfig`; heavy imports happen on the first call."""
    if config.kind == "vllm":
        options = config.vllm

        def make_vllm(source: str, revision: Optional[str] = None) -> Engine:
            from llmops.gateway.engines.vllm import VllmEngine

            return VllmEngine(source, revision=revision, dtype=config.dtype,
                              max_loras=options.max_loras, max_lora_rank=options.max_lora_rank,
                              gpu_memory_utilization=options.gpu_memory_utilization,
                              max_model_len=options.max_model_len, engine_kwargs=options.engine_args)

        return make_vllm
    if config.kind != "transformers":  # `upstream` is served by `llmops.gateway.proxy`, not by an engine
        raise ValueError(f"engine kind {config.kind!r} has no in-process engine")

    def make(source: str, revision: Optional[str] = None) -> Engine:
        from llmops.gateway.engines.transformers import TransformersEngine

        return TransformersEngine(source, device=config.device, dtype=config.dtype,
                                  max_batch_size=config.max_batch_size,
                                  max_loaded_adapters=config.max_loaded_adapters, revision=revision)

    return make
