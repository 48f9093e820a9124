"""The gateway's configuration (`serving/gateway.yaml`): where to listen, what to serve, how to trace.

    host: 127.0.0.1
    port: 8000
    models: [tiny@production, capitals@production]   # omit to serve every registered model
    engine: {kind: transformers, max_batch_size: 16}
    tracing: {enabled: true, sample_ratio: 1.0}
    limits: {max_body_bytes: 1048576, max_tokens: 256}
    auth: {enabled: true, keys: [{id: team-a, sha256: 9f86d0..., models: ["capitals@*"], requests_per_minute: 600}]}
    capture: {enabled: true, path: traffic}

`engine.kind: upstream` forwards to a fleet of OpenAI-compatible servers (`engine.upstream.urls`);
`engine.kind: vllm` runs vLLM in-process (`pip install 'llmops[vllm]'`).

Loaded with `llmops.config.load_config(path, GatewayConfig, overrides)`; `llmops validate` checks it.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from llmops.config import ConfigModel
from llmops.gateway.auth import AuthConfig
from llmops.gateway.capture import CaptureConfig
from llmops.gateway.engines.upstream import UpstreamConfig

__all__ = ["GatewayConfig", "EngineConfig", "VllmConfig", "TracingConfig", "LimitsConfig"]


class VllmConfig(ConfigModel):
    """Options of the in-process vLLM engine (`engine.kind: vllm`)."""

    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """Share of the GPU's memory vLLM may take (weights and KV cache)."""
    max_loras: int = Field(8, ge=1)
    """Adapters in one batch (`--max-loras`)."""
    max_lora_rank: int = Field(64, ge=1)
    """Largest adapter rank served (`--max-lora-rank`): one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (vLLM's set)."""
    max_model_len: Optional[int] = Field(None, ge=1)
    """Context length; None: the model's."""
    engine_args: dict = {}
    """More `vllm.engine.arg_utils.AsyncEngineArgs` fields, passed as is (e.g. `tensor_parallel_size: 2`)."""

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_vllm_accepts(cls, value: int) -> int:
        from llmops.gateway.engines.vllm import check_max_lora_rank  # vLLM itself is not imported

        return check_max_lora_rank(value)


class EngineConfig(ConfigModel):
    """How models are run."""

    kind: Literal["transformers", "vllm", "upstream"] = "transformers"
    """The engine: `transformers` (in-process, CPU or GPU, peft adapters, batching), `vllm` (in-process
    vLLM with LoRA, GPU) or `upstream` (a fleet of OpenAI-compatible servers such as `vllm serve`)."""
    device: str = "auto"
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype: `auto` is bfloat16 on CUDA and float32 on CPU."""
    max_batch_size: int = Field(32, ge=1, le=1024)
    """Most sequences decoded together in one step; requests beyond it wait for a free slot."""
    num_threads: Optional[int] = Field(None, ge=1)
    """torch CPU threads (`torch.set_num_threads`); None keeps torch's default. 1 is fastest for small
    models on a busy machine."""
    max_loaded_adapters: int = Field(64, ge=1)
    """Adapters kept loaded per base model (the oldest unused is unloaded beyond this)."""
    vllm: VllmConfig = VllmConfig()
    """Options of `kind: vllm`."""
    upstream: Optional[UpstreamConfig] = None
    """The servers of `kind: upstream` (required for it)."""

    @model_validator(mode="after")
    def _upstream_matches_kind(self) -> "EngineConfig":
        if self.kind == "upstream" and self.upstream is None:
            raise ValueError("engine.upstream: kind upstream needs `upstream: {urls: [http://HOST:PORT, ...]}`")
        if self.kind != "upstream" and self.upstream is not None:
            raise ValueError(f"engine.upstream: only used with kind upstream (kind is {self.kind})")
        return self


class TracingConfig(ConfigModel):
    """Request tracing into MLflow (one trace per request: spans resolve, render, generate)."""

    enabled: bool = True
    """Record traces."""
    experiment: str = "llmops-gateway"
    """MLflow experiment that holds the traces."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of requests traced (decided at random per request)."""
    flush_interval: float = Field(0.5, gt=0.0, le=60.0)
    """Seconds between bulk writes of the queued traces to the store."""
    max_batch: int = Field(2000, ge=1)
    """Most traces written in one transaction."""
    max_queue: int = Field(50_000, ge=1)
    """Traces waiting to be written beyond this are dropped (and counted in `llmops:background_dropped_total{writer="traces"}`)."""
    capture_text: bool = True
    """Store request messages and response text in the trace (off: only sizes, versions and timings)."""
    otlp_endpoint: Optional[str] = None
    """Also export spans to this OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); needs
    `pip install opentelemetry-exporter-otlp-proto-http`."""


class LimitsConfig(ConfigModel):
    """Bounds on every count and length a request carries, the same on both backends (400 beyond)."""

    max_body_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body accepted; larger bodies get 413."""
    max_json_depth: int = Field(64, ge=4, le=512)
    """Deepest nesting of arrays and objects in a request body."""
    max_tokens: int = Field(1024, ge=1)
    """Largest `max_tokens` / `max_completion_tokens` a request may ask for (400 beyond)."""
    default_max_tokens: int = Field(256, ge=1)
    """`max_tokens` of a request that sets none (also forwarded to an upstream fleet, so every
    generation has a bound its rate limit can reserve)."""
    max_n: int = Field(16, ge=1)
    """Largest `n` (choices per prompt)."""
    max_prompts: int = Field(64, ge=1)
    """Most prompts in one `/v1/completions` request (a list of strings or of token-id lists)."""
    max_sequences: int = Field(64, ge=1)
    """Most sequences one request generates: prompts x `n`."""
    max_stop: int = Field(4, ge=0)
    """Most stop sequences per request (OpenAI allows 4)."""
    max_stop_length: int = Field(128, ge=1)
    """Longest stop sequence, in characters."""
    max_embedding_inputs: int = Field(256, ge=1)
    """Most inputs in one `/v1/embeddings` request."""
    max_embedding_tokens: int = Field(65_536, ge=1)
    """Most input tokens in one `/v1/embeddings` request (counted by the tokenizer in process; a fleet,
    which does not tokenize, counts UTF-8 bytes / 4, rounded up, per string input)."""
    request_timeout: float = Field(300.0, gt=0.0)
    """Seconds a request may take before it is cancelled (504)."""

    @model_validator(mode="after")
    def _default_within_max(self) -> "LimitsConfig":
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("limits.default_max_tokens must not exceed limits.max_tokens")
        if self.max_n > self.max_sequences:
            raise ValueError("limits.max_n must not exceed limits.max_sequences")
        return self


class GatewayConfig(ConfigModel):
    """`llmops serve` configuration."""

    kind: Optional[Literal["gateway"]] = None
    """Optional marker so that `llmops validate` recognises the file anywhere."""
    host: str = "127.0.0.1"
    """Interface to bind (`0.0.0.0` exposes the gateway to the network)."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    models: Optional[list[str]] = None
    """Registry refs clients may request (`NAME@ALIAS`, `NAME/VERSION`, `NAME`). Omitted: every
    registered model, by any ref."""
    preload: bool = True
    """Load the listed `models` at start-up instead of on their first request."""
    refresh_interval: float = Field(5.0, gt=0.0)
    """Seconds between re-resolutions of served refs, so that a moved alias is served without restart."""
    shutdown_timeout: float = Field(10.0, ge=0.0)
    """Seconds SIGTERM waits for requests in flight (streams included) before closing; capture and
    traces are flushed after them."""
    engine: EngineConfig = EngineConfig()
    tracing: TracingConfig = TracingConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    capture: CaptureConfig = CaptureConfig()

    @field_validator("models")
    @classmethod
    def _valid_refs(cls, models: Optional[list[str]]) -> Optional[list[str]]:
        if models is None:
            return None
        from llmops.errors import RegistryError
        from llmops.registry.refs import parse_ref

        for ref in models:
            try:
                parse_ref(ref)
            except RegistryError as error:
                raise ValueError(str(error)) from None
        if len(set(models)) != len(models):
            raise ValueError("models: each ref may be listed once")
        return models
