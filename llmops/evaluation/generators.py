"""Where an evaluation's answers come from: a gateway URL, or the gateway's own code in-process.

Both speak the OpenAI chat-completions wire format as raw JSON. On a small machine the evaluation
client shares the CPU with the gateway, and building SDK objects per request (the `openai` client
spends about 3.5 ms of CPU on each) slows the gateway down; a plain HTTP client spends a tenth of
that. Through a URL the client is aiohttp; in-process it is httpx over the gateway's ASGI app, so
evaluation runs exactly the code that serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from llmops.errors import LlmopsError

__all__ = ["Generation", "GenerationError", "ChatGenerator", "LazyGenerator", "gateway_generator", "in_process_generator"]

_CHAT_PATH = "/v1/chat/completions"
Post = Callable[[str, bytes, dict[str, str]], Awaitable[tuple[int, bytes, Any]]]
"""(path, body, headers) -> (status, body, response headers)."""


@dataclass(frozen=True)
class Generation:
    """One answer with what the scorers and the cache need."""

    text: str
    latency_s: float
    output_tokens: int
    model_version: Optional[str] = None
    request_id: Optional[str] = None
    """The `x-request-id` the gateway answered with (it records it as the trace's client_request_id)."""


class GenerationError(LlmopsError):
    """The server refused or failed a request; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"{status} {message}" if status else message)


def _error_message(status: int, body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass
    return body[:200].decode("utf-8", "replace") or f"HTTP {status}"


class ChatGenerator:
    """Chat completions over a `post` function. `calls` counts requests sent."""

    def __init__(self, post: Post, api_key: str, closer: contextlib.AsyncExitStack, base_url: Optional[str] = None):
        self.base_url = base_url
        """The gateway URL (None: the gateway app in this process)."""
        self._post = post
        self._headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
        self._closer = closer
        self.calls = 0

    async def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                   request_id: Optional[str] = None) -> Generation:
        """Send one chat request (with `x-request-id: request_id` when given). Raises GenerationError."""
        self.calls += 1
        body = json.dumps({"model": model, "messages": messages, **params}).encode()
        sent = {**self._headers, "x-request-id": request_id} if request_id else self._headers
        start = time.perf_counter()
        status, raw, headers = await self._post(_CHAT_PATH, body, sent)
        latency = time.perf_counter() - start
        if status >= 400:
            raise GenerationError(status, _error_message(status, raw))
        completion = json.loads(raw)
        usage = completion.get("usage") or {}
        return Generation(
            text=completion["choices"][0]["message"].get("content") or "",
            latency_s=latency,
            output_tokens=int(usage.get("completion_tokens") or 0),
            model_version=headers.get("x-llmops-model-version"),
            request_id=headers.get("x-request-id") or request_id,
        )

    async def aclose(self) -> None:
        """Close the HTTP client (and stop an in-process gateway)."""
        await self._closer.aclose()


class LazyGenerator:
    """Creates the real generator on the first request, so a fully cached run starts no engine."""

    def __init__(self, factory: Callable[[], Awaitable[ChatGenerator]]):
        self._factory = factory
        self._generator: Optional[ChatGenerator] = None
        self._lock: Optional[asyncio.Lock] = None

    @property
    def calls(self) -> int:
        """Requests sent so far (0 when nothing was generated)."""
        return self._generator.calls if self._generator else 0

    @property
    def base_url(self) -> Optional[str]:
        """The gateway URL of the generator once created (None in-process or before the first request)."""
        return self._generator.base_url if self._generator else None

    async def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                   request_id: Optional[str] = None) -> Generation:
        if self._generator is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._generator is None:
                    self._generator = await self._factory()
        return await self._generator.chat(model, messages, params, request_id)

    async def aclose(self) -> None:
        if self._generator is not None:
            await self._generator.aclose()


async def gateway_generator(base_url: str, api_key: Optional[str] = None, timeout: float = 300.0,
                            retries: int = 2) -> ChatGenerator:
    """A generator for a running gateway (or any OpenAI-compatible server) at `base_url`.

    Connection errors and 502/503/504 are retried `retries` times with a short backoff.
    """
    import os

    import aiohttp

    url = base_url.rstrip("/").removesuffix("/v1")
    key = api_key or os.environ.get("LLMOPS_API_KEY") or os.environ.get("OPENAI_API_KEY") or "unused"
    stack = contextlib.AsyncExitStack()
    session = await stack.enter_async_context(
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), connector=aiohttp.TCPConnector(limit=0)))

    async def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
        for attempt in range(retries + 1):
            try:
                async with session.post(url + path, data=body, headers=headers) as response:
                    raw = await response.read()
                    if response.status not in (502, 503, 504) or attempt == retries:
                        return response.status, raw, response.headers
            except aiohttp.ClientConnectionError as error:
                if attempt == retries:
                    raise GenerationError(0, f"cannot reach {url}: {error}") from None
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    return ChatGenerator(post, key, stack, base_url=url)


async def in_process_generator(config_path: Optional[str] = None) -> ChatGenerator:
    """A generator backed by the gateway app itself, in this process (no socket).

    `config_path` is a gateway config (default: the built-in defaults, serving every registered model).
    """
    import httpx

    from llmops.config import load_config
    from llmops.gateway.app import create_app
    from llmops.gateway.config import GatewayConfig

    # Evaluation traffic is recorded as eval runs, not as gateway traces (unless a config asks for them).
    config = load_config(config_path, GatewayConfig) if config_path else GatewayConfig(tracing={"enabled": False})
    app = create_app(config)
    stack = contextlib.AsyncExitStack()
    # httpx's ASGI transport does not run the app's lifespan; enter it ourselves so engines (or the
    # connection pool of an upstream fleet) start and stop.
    await stack.enter_async_context(app.lifespan())
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://llmops.local", timeout=600))

    async def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
        response = await client.post(path, content=body, headers=headers)
        return response.status_code, response.content, response.headers

    return ChatGenerator(post, "in-process", stack)
