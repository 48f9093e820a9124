"""The in-process backend: engines in this process (transformers, or vLLM's `AsyncLLM`).

It turns an admitted `Call` into a `Reply` through the serving layer: `CompletionService` for chat
and text completions, `EmbeddingService` for embeddings, `EngineRouter` for which loaded engine and
adapter a model version runs on.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import orjson

from llmops.gateway import responses
from llmops.gateway.context import new_request_id
from llmops.gateway.embeddings import EmbeddingService
from llmops.gateway.pipeline import Call, Reply
from llmops.gateway.serving import CompletionService

__all__ = ["InProcessBackend"]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class InProcessBackend:
    """Engines loaded in this process.

    Args:
        config: `GatewayConfig`.
    """

    cancels_unstreamed = True
    """A client that leaves (or a timeout) cancels even a non-streamed generation."""

    def __init__(self, config: Any):
        from llmops.gateway.engines import create_engine_factory
        from llmops.gateway.router import EngineRouter

        self.config = config
        self.router = EngineRouter(create_engine_factory(config.engine))
        self.completions = CompletionService(config.limits)
        self.embeddings = EmbeddingService(config.limits)
        self.capture_text = False

    async def start(self) -> None:
        """Set torch's threads (`engine.num_threads`)."""
        if self.config.engine.num_threads:
            import torch

            torch.set_num_threads(self.config.engine.num_threads)

    async def prepare(self, version: Any) -> None:
        """Load what `version` needs (the resolver calls this before serving a version)."""
        await self.router.route(version)

    async def generate(self, call: Call) -> Reply:
        """A chat or text completion: JSON, or SSE chunks for a stream."""
        ctx, request = call.ctx, call.request
        route = await self.router.route(call.version)
        chat = ctx.endpoint == "chat.completions"
        service = self.completions
        prepare = service.prepare_chat if chat else service.prepare_completion
        prepared = await prepare(request, route, call.plan, ctx)
        response_id = new_request_id("chatcmpl" if chat else "cmpl")
        capture = self._capture_fields(call, prepared, route.engine)
        if prepared.stream:
            stream = responses.chat_stream if chat else responses.completion_stream
            events = stream(service, prepared, ctx, request.model, response_id, request.include_usage())
            return Reply(200, _SSE, chunks=_encoded(events), capture=capture)
        choices = await service.collect(prepared, ctx)
        full = responses.chat_response if chat else responses.completion_response
        result = full(prepared, ctx, choices, request.model, response_id)
        texts = [c.text for c in choices]
        return Reply(200, _JSON, orjson.dumps(result.model_dump()), outputs=texts, capture=capture)

    async def embed(self, call: Call) -> Reply:
        """Embeddings of the request's inputs."""
        route = await self.router.route(call.version)
        return Reply(200, _JSON, await self.embeddings.embed(call.request, route, call.ctx))

    def _capture_fields(self, call: Call, prepared: Any, engine: Any):
        ctx = call.ctx
        if ctx.token_ids is None:
            return None
        count = len(prepared.prompts) * len(prepared.params)

        def fields() -> dict:  # on the capture thread
            ids = [ctx.token_ids.get(i, []) for i in range(count)]
            return {"prompt_token_ids": prepared.prompts[0], "completion_token_ids": ids,
                    "completion_text": [engine.decode(t) for t in ids] if self.capture_text else None}

        return fields

    def health(self) -> dict:
        """Per-engine counts, for `/health`."""
        return {"engines": {ref: e.stats() for ref, e in self.router.engines().items()}}

    async def close(self) -> None:
        """Close every engine."""
        await self.router.close()


async def _encoded(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event.encode()
    finally:
        await events.aclose()


