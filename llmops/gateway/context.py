"""Per-request state that the pipeline, both backends, metrics, tracing and capture share.

The pipeline creates one `RequestContext` per request; a backend reports what happened through
three calls (`token`, `finish_choice`, `usage`), so that time to first token, inter-token latency and
finished choices are recorded by one piece of code whichever backend generated them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["RequestContext", "new_request_id"]


# A private generator: code that seeds the global `random` (transformers' `set_seed`, tests) must not
# make ids repeat.
_IDS = random.Random()


def new_request_id(prefix: str = "") -> str:
    """A fresh OpenAI-style id (`chatcmpl-…`, `cmpl-…`).

    From `random`, not `uuid4`: ids need not be secret, and `os.urandom` is a system call that drops
    the GIL, which the engine thread then holds for up to a switch interval (5 ms) under load.
    """
    token = f"{_IDS.getrandbits(128):032x}"
    return f"{prefix}-{token}" if prefix else token


@dataclass(eq=False)
class RequestContext:
    """What one request knows about itself, from arrival to the last byte."""

    request_id: str
    """The gateway's own id: the engine key, the trace's `llmops.request_id`, the capture row's id."""
    endpoint: str
    client_request_id: Optional[str] = None
    """The client's `x-request-id`, echoed back and recorded in the trace; never used as a key."""
    arrival: float = field(default_factory=time.perf_counter)
    arrival_ns: int = field(default_factory=time.time_ns)
    key_id: Optional[str] = None
    """The `id` of the caller's API key (never the key), None without auth."""
    trace: Any = None
    headers: dict = field(default_factory=dict)
    labels: tuple = ("", "")
    model: Optional[str] = None
    model_version: Optional[str] = None
    prompt_ref: Optional[str] = None
    prompt_version: Optional[str] = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_ns: Optional[int] = None
    token_ids: Optional[dict] = None
    """Choice index -> generated token ids, collected only when set to a dict (traffic capture)."""
    finish_reasons: dict = field(default_factory=dict)
    _last_token_ns: dict = field(default_factory=dict)
    series: Any = None
    """The model version's metric series (`GatewayMetrics.series`), once resolved."""

    def resolved(self, metrics: Any, labels: tuple[str, str], version_ref: str) -> None:
        """The model version is known: label metrics with it and tell the client."""
        self.labels = labels
        self.model_version = version_ref
        self.headers["x-llmops-model-version"] = version_ref
        if metrics is not None:
            self.series = metrics.series(labels)
        if self.trace is not None:
            self.trace.set_tag("llmops.model", self.model)
            self.trace.set_tag("llmops.model_version", version_ref)

    def token(self, now_ns: int, index: int = 0) -> None:
        """A token (or a streamed chunk of them) of choice `index` arrived at `now_ns`."""
        if self.first_token_ns is None:
            self.first_token_ns = now_ns
            if self.series is not None:
                self.series.ttft.observe((now_ns - self.arrival_ns) / 1e9)
        last = self._last_token_ns.get(index)
        if last is not None and self.series is not None:
            self.series.itl.observe((now_ns - last) / 1e9)
        self._last_token_ns[index] = now_ns

    def finish_choice(self, index: int, reason: Optional[str]) -> None:
        """Choice `index` finished (`stop`, `length`, `abort`)."""
        if reason is None or index in self.finish_reasons:
            return
        self.finish_reasons[index] = reason
        if self.series is not None:
            self.series.finished(reason)

    def usage(self, prompt_tokens: Optional[int], completion_tokens: Optional[int]) -> None:
        """The tokens the request read and generated (as the backend counted them)."""
        self.prompt_tokens = int(prompt_tokens or 0)
        self.completion_tokens = int(completion_tokens or 0)

    @property
    def ttft_ms(self) -> Optional[float]:
        """Time to first token in ms, None before it."""
        return None if self.first_token_ns is None else round((self.first_token_ns - self.arrival_ns) / 1e6, 3)
