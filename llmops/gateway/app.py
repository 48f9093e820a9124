"""The FastAPI app: thin routes over the serving logic, plus health, models, metrics.

Each route reads the body (bounded by `limits.max_body_bytes`), validates it into a protocol model,
calls the serving layer and answers; any error becomes OpenAI's shape with a 4xx status for the
client's mistakes. Every request gets an `x-request-id`, counts in the metrics and (when sampled)
leaves one trace. With `auth.enabled` the API routes need a configured key (401 / 403 / 429), and
with `capture.enabled` every generation leaves a record in the traffic dataset (`capture.py`).

`engine.kind: upstream` gets a different app: the lean pass-through proxy of `proxy.py`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmops.gateway import responses
from llmops.gateway.auth import ApiKeyConfig, KeyChecker, fnmatch_any
from llmops.gateway.config import GatewayConfig
from llmops.gateway.errors import GatewayError, error_body, from_exception, from_validation_errors
from llmops.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from llmops.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    UsageInfo,
)
from llmops.gateway.ratelimit import RateLimiter, RateLimitExceeded
from llmops.gateway.serving import CompletionService, RequestContext, new_request_id

__all__ = ["create_app", "Gateway"]

_log = logging.getLogger(__name__)


class Gateway:
    """The running gateway's parts: router, serving logic, tracer, metrics."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.tracer: Any = None
        self.metrics = GatewayMetrics(lambda: self.tracer.stats if self.tracer is not None else None)
        self.router: Any = None
        self.service: Any = None
        self.capture: Any = None
        self.keys = KeyChecker(config.auth)
        self.limiter = RateLimiter()
        for key in config.auth.keys:
            self.limiter.configure(key.id, key.requests_per_minute, key.tokens_per_minute)

    async def start(self) -> None:
        """Open the tracer, load the configured models, start the registry refresher."""
        from llmops.gateway.capture import CaptureWriter
        from llmops.gateway.engines import create_engine_factory
        from llmops.gateway.router import ModelRouter
        from llmops.gateway.tracing import create_tracer

        engine = self.config.engine
        if engine.num_threads:
            import torch

            torch.set_num_threads(engine.num_threads)
        self.tracer = await asyncio.to_thread(create_tracer, self.config.tracing)
        self.capture = await asyncio.to_thread(CaptureWriter.from_config, self.config.capture)
        self.router = ModelRouter(create_engine_factory(engine), self.config.models, self.config.refresh_interval)
        self.service = CompletionService(self.router, self.config.limits, self.metrics)
        if self.config.preload:
            await self.router.preload()
        self.router.start()

    async def stop(self) -> None:
        """Close the engines and flush the traces and captured traffic."""
        if self.router is not None:
            await self.router.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)

    # ------------------------------------------------------------------------------------- keys

    def authenticate(self, request: Request, ctx: RequestContext) -> Optional[ApiKeyConfig]:
        """The caller's key (None without auth); raises a 401 GatewayError."""
        key = self.keys.authenticate(request.headers.get("authorization"))
        if key is not None:
            ctx.key_id = key.id
            if ctx.trace is not None:
                ctx.trace.set_tag("llmops.key_id", key.id)
        return key

    def admit(self, key: Optional[ApiKeyConfig], model: str, ctx: RequestContext) -> None:
        """Check `key`'s scope for `model` (403) and its rate limits (429 with Retry-After)."""
        if key is None:
            return
        self.keys.check_scope(key, model)
        try:
            self.limiter.admit(key.id)
        except RateLimitExceeded as error:
            ctx.headers["retry-after"] = str(error.retry_after)
            raise

    # ------------------------------------------------------------------------------ bookkeeping

    def begin(self, request: Request, endpoint: str) -> RequestContext:
        request_id = request.headers.get("x-request-id", "")[:128] or new_request_id()
        ctx = RequestContext(request_id=request_id, endpoint=endpoint)
        ctx.headers["x-request-id"] = request_id
        if self.tracer is not None:
            ctx.trace = self.tracer.begin(endpoint)
            if ctx.trace is not None:
                ctx.trace.set_tag("llmops.request_id", request_id)  # a tag: searchable on every store
                ctx.headers["x-llmops-trace-id"] = ctx.trace.trace_id
        return ctx

    def finish(self, ctx: RequestContext, status: int, error: Optional[str] = None, outputs: Any = None,
               inputs: Any = None) -> None:
        if ctx.key_id is not None:
            self.limiter.record_tokens(ctx.key_id, ctx.prompt_tokens + ctx.completion_tokens)
        m, labels = self.metrics, ctx.labels
        latency = time.perf_counter() - ctx.arrival
        m.requests.labels(*labels, ctx.endpoint, str(status)).inc()
        if labels[0]:
            m.e2e.labels(*labels).observe(latency)
            m.prompt_tokens.labels(*labels).inc(ctx.prompt_tokens)
            m.generation_tokens.labels(*labels).inc(ctx.completion_tokens)
            if status < 400 and ctx.endpoint != "embeddings":
                m.request_prompt_tokens.labels(*labels).observe(ctx.prompt_tokens)
                m.request_generation_tokens.labels(*labels).observe(ctx.completion_tokens)
        trace = ctx.trace
        if trace is not None:
            trace.end_ns = time.time_ns()
            trace.usage = (ctx.prompt_tokens, ctx.completion_tokens)
            trace.attributes.update({
                "llmops.status": status,
                "llmops.prompt_tokens": ctx.prompt_tokens,
                "llmops.completion_tokens": ctx.completion_tokens,
                "llmops.latency_ms": round(latency * 1000, 3),
                "llmops.time_to_first_token_ms": ctx.ttft_ms,
            })
            trace.inputs, trace.outputs, trace.error = inputs, outputs, error
            self.tracer.submit(trace)

    def capture_traffic(self, ctx: RequestContext, body: Any, prepared: Any, status: int,
                        texts: Optional[list[str]] = None) -> None:
        """Queue the capture record of a generation (token ids; text when `capture.text`)."""
        if self.capture is None or prepared is None:
            return
        count = len(prepared.prompts) * len(prepared.params)
        ids = ctx.token_ids or {}
        completion_ids = [ids.get(i, []) for i in range(count)]
        registry_prompt = ctx.endpoint == "chat.completions" or getattr(body, "variables", None) is not None
        record = {
            "time": ctx.arrival_ns / 1e9, "request_id": ctx.request_id, "key_id": ctx.key_id,
            "endpoint": ctx.endpoint, "model": body.model, "model_version": ctx.headers.get("x-llmops-model-version"),
            "prompt_ref": body.prompt if registry_prompt and isinstance(body.prompt, str) else None,
            "prompt_version": ctx.headers.get("x-llmops-prompt-version"), "status": status,
            "prompt_token_ids": prepared.prompts[0], "completion_token_ids": completion_ids,
            "finish_reasons": [ctx.finish_reasons.get(i) for i in range(count)],
            "prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
            "latency_ms": round((time.perf_counter() - ctx.arrival) * 1000, 3), "ttft_ms": ctx.ttft_ms,
        }
        if not self.capture.keep_text:
            self.capture.submit(record)
            return
        engine, inputs = prepared.route.engine, prepared.trace_inputs or {}

        def with_text() -> dict:  # decoded on the capture thread, off the request path
            prompt = inputs.get("messages")
            record["prompt_text"] = json.dumps(prompt) if prompt is not None else (inputs.get("prompt") or [None])[0]
            record["completion_text"] = texts if texts is not None else [engine.decode(t) for t in completion_ids]
            return record

        self.capture.submit(with_text)


# ------------------------------------------------------------------------------------------ helpers


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                           code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GatewayError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None


def _parse(model_cls: Any, data: Any) -> Any:
    if not isinstance(data, dict):
        raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model_cls.model_validate(data)
    except ValidationError as error:
        raise from_validation_errors(error.errors(include_url=False)) from None


def _error_response(error: GatewayError, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _until_disconnect(request: Request, work: Any, timeout: float) -> Any:
    """Run `work`; cancel it when the client goes away (its generation stops) or after `timeout`."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if watcher in done:
        raise GatewayError(499, "client closed the request", code="client_closed_request")
    raise GatewayError(504, f"the request took longer than {timeout:g} s and was cancelled", code="timeout")


# --------------------------------------------------------------------------------------------- app


@asynccontextmanager
async def _deadline(seconds: float):
    """`asyncio.timeout` for Python 3.10: cancel the current task after `seconds`, raise TimeoutError."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = loop.call_later(seconds, fire)
    try:
        yield
    except asyncio.CancelledError:
        if fired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        handle.cancel()


_timeout = getattr(asyncio, "timeout", None) or _deadline


def create_app(config: Optional[GatewayConfig] = None) -> Any:
    """The gateway as an ASGI app; models load when the app starts (lifespan).

    `engine.kind: upstream` returns the pass-through proxy (`proxy.UpstreamProxy`) instead.
    """
    config = config or GatewayConfig()
    if config.engine.kind == "upstream":
        return _create_proxy_app(config)
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="llmops gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    limit = config.limits.max_body_bytes

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = "not found" if error.status_code == 404 else str(error.detail)
        return JSONResponse(error_body(error.status_code, f"{request.method} {request.url.path}: {message}"),
                            status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(from_validation_errors(list(error.errors())))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, error: Exception) -> JSONResponse:
        _log.exception("unhandled error on %s", request.url.path)
        return _error_response(from_exception(error))

    async def _generation(request: Request, endpoint: str, model_cls: Any) -> Response:
        ctx = gateway.begin(request, endpoint)
        prepared = body = None
        if gateway.capture is not None:
            ctx.token_ids = {}
        try:
            key = gateway.authenticate(request, ctx)
            body = _parse(model_cls, await _read_json(request, limit))
            gateway.admit(key, body.model, ctx)
            service = gateway.service
            if endpoint == "chat.completions":
                prepared = await service.prepare_chat(body, ctx)
                prefix, full, stream = "chatcmpl", responses.chat_response, responses.chat_stream
            else:
                prepared = await service.prepare_completion(body, ctx)
                prefix, full, stream = "cmpl", responses.completion_response, responses.completion_stream
            response_id = new_request_id(prefix)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(
                    _streamed(ctx, stream(service, prepared, ctx, body.model, response_id, include_usage), prepared,
                              body),
                    media_type="text/event-stream", headers=ctx.headers)
            gateway.metrics.running.labels(*ctx.labels).inc()
            try:
                choices = await _until_disconnect(request, service.collect(prepared, ctx), config.limits.request_timeout)
            finally:
                gateway.metrics.running.labels(*ctx.labels).dec()
            result = full(prepared, ctx, choices, body.model, response_id)
            texts = [c.text for c in choices]
            gateway.finish(ctx, 200, outputs=texts, inputs=prepared.trace_inputs)
            gateway.capture_traffic(ctx, body, prepared, 200, texts)
            return JSONResponse(result.model_dump(), headers=ctx.headers)
        except Exception as error:
            failure = from_exception(error)
            if failure.status >= 500:
                _log.exception("request %s failed", ctx.request_id)
            gateway.finish(ctx, failure.status, error=failure.message,
                           inputs=prepared.trace_inputs if prepared else None)
            if ctx.completion_tokens:
                gateway.capture_traffic(ctx, body, prepared, failure.status)
            return _error_response(failure, ctx.headers)

    async def _streamed(ctx: RequestContext, events: AsyncIterator[str], prepared: Any,
                        body: Any) -> AsyncIterator[str]:
        gateway.metrics.running.labels(*ctx.labels).inc()
        status, error = 200, None
        try:
            async with _timeout(config.limits.request_timeout):
                async for item in events:
                    yield item
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "client disconnected"
            raise
        except asyncio.TimeoutError:
            status, error = 504, "timeout"
            yield responses.sse(error_body(504, "the request timed out and was cancelled", code="timeout"))
        finally:
            await events.aclose()
            gateway.metrics.running.labels(*ctx.labels).dec()
            gateway.finish(ctx, status, error=error, inputs=prepared.trace_inputs)
            gateway.capture_traffic(ctx, body, prepared, status)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generation(request, "chat.completions", ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generation(request, "completions", CompletionRequest)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        ctx = gateway.begin(request, "embeddings")
        try:
            key = gateway.authenticate(request, ctx)
            body = _parse(EmbeddingRequest, await _read_json(request, limit))
            gateway.admit(key, body.model, ctx)
            route = await gateway.service._resolve(body.model, ctx)
            texts = _embedding_texts(body, route.engine)
            started = time.time_ns()
            vectors, tokens = await route.engine.embed(texts)
            if body.dimensions is not None and body.dimensions != len(vectors[0]):
                raise GatewayError(400, f"dimensions: this model embeds into {len(vectors[0])} dimensions",
                                   param="dimensions")
            if ctx.trace is not None:
                ctx.trace.add_span("embed", started, time.time_ns(), inputs=len(texts))
            ctx.prompt_tokens = tokens
            data = [{"index": i, "embedding": _encode_vector(v, body.encoding_format)} for i, v in enumerate(vectors)]
            result = EmbeddingResponse(data=data, model=body.model,
                                       usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens))
            gateway.finish(ctx, 200, inputs={"input": texts}, outputs={"count": len(vectors)})
            return JSONResponse(result.model_dump(), headers=ctx.headers)
        except Exception as error:
            failure = from_exception(error)
            gateway.finish(ctx, failure.status, error=failure.message)
            return _error_response(failure, ctx.headers)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            key = gateway.keys.authenticate(request.headers.get("authorization"))
            listing = await gateway.router.list_models()
        except Exception as error:
            return _error_response(from_exception(error))
        if key is not None:  # a key sees the models it may call
            listing = [(ref, v) for ref, v in listing if fnmatch_any(ref, key.models)]
        cards = [ModelCard(id=ref, created=int(v.created.timestamp()) if v.created else 0, root=v.ref,
                           parent=v.base, kind=v.kind) for ref, v in listing]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/health")
    async def health() -> Response:
        engines = gateway.router.engines() if gateway.router is not None else {}
        return JSONResponse({"status": "ok", "engines": {ref: e.stats() for ref, e in engines.items()}})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if gateway.keys.metrics_require_key:
            try:
                gateway.keys.authenticate(request.headers.get("authorization"))
            except GatewayError as error:
                return _error_response(error)
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    return app


def _create_proxy_app(config: GatewayConfig) -> Any:
    from llmops.gateway.capture import CaptureWriter
    from llmops.gateway.proxy import RegistryResolver, UpstreamProxy

    upstream = config.engine.upstream
    resolver = RegistryResolver(config.models, config.refresh_interval, upstream.served_model_names)
    metrics = GatewayMetrics(lambda: proxy.tracer.stats if proxy.tracer is not None else None)
    proxy = UpstreamProxy(upstream, resolver, auth=config.auth, capture=CaptureWriter.from_config(config.capture),
                          metrics=metrics, max_body_bytes=config.limits.max_body_bytes,
                          shutdown_timeout=config.shutdown_timeout, tracing=config.tracing)
    return proxy


def _embedding_texts(body: EmbeddingRequest, engine: Any) -> list[str]:
    data = body.input
    if isinstance(data, str):
        texts = [data]
    elif data and all(isinstance(x, str) for x in data):
        texts = list(data)
    elif data and all(isinstance(x, int) for x in data):
        texts = [engine.decode(data)]
    elif data and all(isinstance(x, list) for x in data):
        texts = [engine.decode(x) for x in data]
    else:
        raise GatewayError(400, "input must be a non-empty string, list of strings or token ids", param="input")
    if any(not t for t in texts):
        raise GatewayError(400, "input must not contain empty strings", param="input")
    return texts


def _encode_vector(vector: list[float], encoding: Optional[str]) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
