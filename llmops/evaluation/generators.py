"""Where an evaluation's answers come from: a gateway URL, or the gateway's own code in-process.

Both paths speak the OpenAI chat API through the official async `openai` client; in-process, the
client's HTTP transport is the gateway's ASGI app, so evaluation runs exactly the code that serves.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["Generation", "OpenAIGenerator", "LazyGenerator", "gateway_generator", "in_process_generator"]


@dataclass(frozen=True)
class Generation:
    """One answer with what the scorers and the cache need."""

    text: str
    latency_s: float
    output_tokens: int
    model_version: Optional[str] = None


class OpenAIGenerator:
    """Chat completions through an `openai.AsyncOpenAI` client. `calls` counts requests sent."""

    def __init__(self, client: Any, closer: Optional[contextlib.AsyncExitStack] = None):
        self.client = client
        self._closer = closer
        self.calls = 0

    async def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> Generation:
        """Send one chat request; raises the client's errors (openai.APIStatusError...)."""
        self.calls += 1
        start = time.perf_counter()
        raw = await self.client.chat.completions.with_raw_response.create(model=model, messages=messages, **params)
        completion = raw.parse()
        latency = time.perf_counter() - start
        usage = completion.usage
        return Generation(
            text=completion.choices[0].message.content or "",
            latency_s=latency,
            output_tokens=usage.completion_tokens if usage else 0,
            model_version=raw.headers.get("x-llmops-model-version"),
        )

    async def aclose(self) -> None:
        """Close the client (and stop an in-process gateway)."""
        await self.client.close()
        if self._closer is not None:
            await self._closer.aclose()


class LazyGenerator:
    """Creates the real generator on the first request, so a fully cached run starts no engine."""

    def __init__(self, factory):
        self._factory = factory
        self._generator: Optional[OpenAIGenerator] = None
        self._lock = None

    @property
    def calls(self) -> int:
        """Requests sent so far (0 when nothing was generated)."""
        return self._generator.calls if self._generator else 0

    async def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> Generation:
        import asyncio

        if self._generator is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._generator is None:
                    self._generator = await self._factory()
        return await self._generator.chat(model, messages, params)

    async def aclose(self) -> None:
        if self._generator is not None:
            await self._generator.aclose()


def gateway_generator(base_url: str, api_key: Optional[str] = None, timeout: float = 120.0) -> OpenAIGenerator:
    """A generator that calls a running gateway (or any OpenAI-compatible server) at `base_url`."""
    import os

    from llmops.extras import require

    openai = require("openai", "evaluation through a gateway")
    url = base_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    key = api_key or os.environ.get("LLMOPS_API_KEY") or os.environ.get("OPENAI_API_KEY") or "unused"
    return OpenAIGenerator(openai.AsyncOpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=2))


async def in_process_generator(config_path: Optional[str] = None) -> OpenAIGenerator:
    """A generator backed by the gateway app itself, in this process (no socket).

    `config_path` is a gateway config (default: the built-in defaults, serving every registered model).
    """
    import httpx

    from llmops.config import load_config
    from llmops.extras import require
    from llmops.gateway.app import create_app
    from llmops.gateway.config import GatewayConfig

    openai = require("openai", "in-process evaluation")
    # Evaluation traffic is recorded as eval runs, not as gateway traces (unless a config asks for them).
    config = load_config(config_path, GatewayConfig) if config_path else GatewayConfig(tracing={"enabled": False})
    app = create_app(config)
    stack = contextlib.AsyncExitStack()
    # httpx's ASGI transport does not run the app's lifespan; enter it ourselves so engines start and stop.
    await stack.enter_async_context(app.router.lifespan_context(app))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://llmops.local", timeout=600)
    stack.push_async_callback(http.aclose)
    client = openai.AsyncOpenAI(base_url="http://llmops.local/v1", api_key="in-process", http_client=http, max_retries=0)
    return OpenAIGenerator(client, stack)
