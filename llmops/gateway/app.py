"""The gateway as one typed ASGI app, the same for in-process engines and an upstream fleet.

`create_app(config)` returns a `GatewayApp`: the request pipeline (`pipeline.py`) over the backend
the config names (`inprocess.InProcessBackend` or `proxy.FleetBackend`), plus `/v1/models`,
`/health`, `/metrics` and `/openapi.json`. `app.lifespan()` is the public start/stop: uvicorn runs
it through the ASGI lifespan protocol, and code that drives the app without a server (evaluation,
tests) enters it directly:

    app = create_app(config)
    async with app.lifespan():
        ...  # httpx.ASGITransport(app=app), or any ASGI client

No web framework sits on the request path: routing is a dict lookup, bodies are read and answered
through raw ASGI messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Optional

from llmops.gateway.asgi import header, send_json
from llmops.gateway.auth import KeyChecker
from llmops.gateway.config import GatewayConfig
from llmops.gateway.errors import GatewayError, error_body, internal_error
from llmops.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from llmops.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelCard, ModelList

__all__ = ["GatewayApp", "create_app"]

_log = logging.getLogger(__name__)
ENDPOINTS = {
    "/v1/chat/completions": ("chat.completions", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
    "/v1/embeddings": ("embeddings", EmbeddingRequest),
}
_GET = ("/v1/models", "/health", "/metrics", "/openapi.json")


class GatewayApp:
    """The gateway: an ASGI callable with a public `lifespan()`.

    Args:
        config: The gateway's configuration.
    """

    def __init__(self, config: GatewayConfig):
        from llmops.gateway.capture import CaptureWriter
        from llmops.gateway.pipeline import Pipeline
        from llmops.gateway.ratelimit import create_rate_limiter
        from llmops.gateway.resolver import RegistryResolver

        self.config = config
        self.tracer: Any = None
        self.metrics = GatewayMetrics()
        self.keys = KeyChecker(config.auth)
        self.capture = CaptureWriter.from_config(config.capture)
        if config.engine.kind == "upstream":
            from llmops.gateway.proxy import FleetBackend

            self.backend: Any = FleetBackend(config, capture=self.capture is not None)
        else:
            from llmops.gateway.inprocess import InProcessBackend

            self.backend = InProcessBackend(config)
            self.backend.capture_text = bool(self.capture is not None and self.capture.keep_text)
        self.resolver = RegistryResolver(config.models, config.refresh_interval, on_move=self.backend.prepare)
        self.pipeline = Pipeline(config, self.backend, self.resolver, self.keys, create_rate_limiter(config.auth),
                                 self.metrics, capture=self.capture)
        self._openapi: Optional[bytes] = None

    # ---------------------------------------------------------------------------------- lifecycle

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator["GatewayApp"]:
        """Start the backend, tracer and registry refresher (loading `models` when `preload`); on exit,
        wait up to `shutdown_timeout` s for requests in flight, then close and flush everything."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def start(self) -> None:
        """Open the backend and tracer; resolve (and load) the configured models when `preload`."""
        from llmops.gateway.tracing import create_tracer

        await self.backend.start()
        self.tracer = await asyncio.to_thread(create_tracer, self.config.tracing)
        self.pipeline.tracer = self.tracer
        self.metrics.watch(*(self.tracer.batchers if self.tracer is not None else ()),
                           self.capture.batcher if self.capture is not None else None)
        if self.config.preload:
            for ref in self.config.models or []:
                await self.resolver.model(ref)
        self.resolver.start()

    async def stop(self) -> None:
        """Drain, then close the backend and flush traces and captured traffic."""
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self.pipeline.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.resolver.close()
        await self.backend.close()
        await self.pipeline.limiter.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)

    # ---------------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            path, method = scope["path"], scope["method"]
            endpoint = ENDPOINTS.get(path)
            if endpoint is not None and method == "POST":
                return await self.pipeline.handle(scope, receive, send, *endpoint)
            try:
                if method == "GET" and path in _GET:
                    return await self._get(path, scope, send)
            except GatewayError as error:
                return await send_json(send, error.status, error.body())
            except Exception:
                _log.exception("GET %s failed", path)
                return await send_json(send, 500, internal_error().body())
            if endpoint is not None or path in _GET:
                allowed = "POST" if endpoint is not None else "GET"
                return await send_json(send, 405, error_body(405, f"{method} {path}: use {allowed}"),
                                       [(b"allow", allowed.encode())])
            return await send_json(send, 404, error_body(404, f"{method} {path}: not found"))
        if kind == "lifespan":
            return await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        started = False
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                    started = True
                except Exception as error:
                    _log.exception("the gateway did not start")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if started:
                    await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _get(self, path: str, scope: dict, send: Callable) -> None:
        if path == "/v1/models":
            key = self.keys.authenticate(header(scope, b"authorization"))
            return await send_json(send, 200, await self.models(key))
        if path == "/health":
            return await send_json(send, 200, {"status": "ok", **self.backend.health()})
        if path == "/openapi.json":
            if self._openapi is None:
                from llmops.gateway.openapi import openapi_document

                self._openapi = openapi_document()
            return await send_json(send, 200, self._openapi)
        if self.keys.metrics_require_key:
            self.keys.authenticate(header(scope, b"authorization"))
        data = self.metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def models(self, key: Any) -> dict:
        """The `/v1/models` listing: the servable refs `key` may call, with their versions."""
        try:
            listing = await self.resolver.list_models()
        except Exception as error:
            from llmops.gateway.errors import from_exception

            raise from_exception(error) from None
        cards = [ModelCard(id=ref, created=int(v.created.timestamp()) if v.created else 0, root=v.ref,
                           parent=v.base, kind=v.kind)
                 for ref, v in listing if self.keys.allows_model(key, ref)]
        return ModelList(data=cards).model_dump()


def create_app(config: Optional[GatewayConfig] = None) -> GatewayApp:
    """The gateway for `config` (defaults: every registered model on the transformers engine)."""
    return GatewayApp(config or GatewayConfig())
