"""The one request pipeline, framework-free, in front of either backend (in-process engines or a fleet).

Each per-request step lives here once: request id, auth, bounded strict JSON, validation, scope,
registry prompt rendering, limits, rate-limit reservation, model resolution, the client-disconnect
and timeout guard, sending the answer, metrics, tracing, the capture record and the error body.
A backend only turns a `Call` into a `Reply` (bytes, or an async iterator of SSE chunks) and reports
tokens through the `RequestContext`.

Unauthenticated requests are answered but not traced. A client's `x-request-id` is echoed back and
recorded in the trace (`llmops.client_request_id`); the gateway's own id is what engines, traces
and capture key on (`x-llmops-request-id`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import orjson
from pydantic import ValidationError

from llmops.gateway.admission import Plan, plan_embeddings, plan_generation
from llmops.gateway.asgi import BodyWriter, parse_json, read_body, relay_iterator, request_headers, send_json
from llmops.gateway.context import RequestContext, new_request_id
from llmops.gateway.errors import GatewayError, from_validation_errors, internal_error
from llmops.gateway.guard import UNGUARDED, RequestGuard
from llmops.gateway.prompting import render_registry_prompt
from llmops.gateway.ratelimit import RateLimitExceeded

__all__ = ["Call", "Reply", "Pipeline"]

_log = logging.getLogger(__name__)
_DONE = b"data: [DONE]\n\n"


@dataclass(eq=False)
class Call:
    """An admitted request, handed to a backend."""

    ctx: RequestContext
    path: str
    request: Any  # the validated protocol model (registry prompt rendered into it)
    body: dict  # the JSON object as received, with the same rendering applied (what a fleet forwards)
    version: Any  # llmops.registry.ModelVersion
    plan: Plan
    defaults: dict  # sampling defaults from the registry prompt's model config


@dataclass(eq=False)
class Reply:
    """A backend's answer: `body`, or `chunks` (SSE bytes) for a stream: an async iterator, or an
    object with `async relay(writer)` (writes them all through an `asgi.BodyWriter`) and `aclose()`."""

    status: int
    headers: list
    body: bytes = b""
    chunks: Any = None
    outputs: Any = None  # completion texts, for the trace
    error: Optional[str] = None  # set when a stream failed after its status line
    capture: Optional[Callable[[], dict]] = None  # token ids and texts for the capture record (lazy)


class Pipeline:
    """Runs every request through the shared steps and one backend.

    Args:
        config: `GatewayConfig`.
        backend: The in-process or fleet backend.
        resolver: `RegistryResolver` (models and prompts).
        keys: `KeyChecker`.
        limiter: From `ratelimit.create_rate_limiter`.
        metrics: `GatewayMetrics`.
        tracer: A `Tracer`, or None.
        capture: A `CaptureWriter`, or None.
    """

    def __init__(self, config: Any, backend: Any, resolver: Any, keys: Any, limiter: Any, metrics: Any,
                 tracer: Any = None, capture: Any = None):
        self.limits = config.limits
        self.backend = backend
        self.resolver = resolver
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        self.tracer = tracer
        self.capture = capture
        self.in_flight = 0

    # --------------------------------------------------------------------------------- request

    async def handle(self, scope: dict, receive: Callable, send: Callable, endpoint: str, model_cls: Any) -> None:
        """Serve one POST to a generation or embeddings endpoint."""
        headers = request_headers(scope)
        client_id = headers.get(b"x-request-id")
        ctx = RequestContext(new_request_id(), endpoint, client_request_id=client_id[:128] if client_id else None)
        ctx.headers["x-llmops-request-id"] = ctx.request_id
        ctx.headers["x-request-id"] = ctx.client_request_id or ctx.request_id
        if self.capture is not None:
            ctx.token_ids = {}  # the in-process engines record generated ids for the capture record
        self.in_flight += 1
        reservation = call = reply = None
        status, error, running = 500, None, False
        try:
            key = self.keys.authenticate(headers.get(b"authorization"))
            if key is not None:
                ctx.key_id = key.id
            if self.tracer is not None:  # after auth: strangers leave no traces
                ctx.trace = self.tracer.begin(endpoint)
                if ctx.trace is not None:
                    ctx.headers["x-llmops-trace-id"] = ctx.trace.trace_id
            raw = await read_body(receive, self.limits.max_body_bytes, headers.get(b"content-length"))
            body = parse_json(raw, self.limits.max_json_depth)
            try:
                request = model_cls.model_validate(body)
            except ValidationError as invalid:
                raise from_validation_errors(invalid.errors(include_url=False, include_input=False)) from None
            ctx.model = request.model
            self.keys.check_scope(key, request.model)
            defaults: dict = {}
            if endpoint == "embeddings":
                plan = plan_embeddings(request, self.limits)
            else:
                ctx.stream = bool(request.stream)
                started = time.time_ns()
                if request.declared("variables") is not None or (endpoint == "chat.completions"
                                                                        and request.prompt is not None):
                    if isinstance(request.prompt, str):
                        self.keys.check_prompt_scope(key, request.prompt)
                    defaults = await render_registry_prompt(self.resolver, request, body, endpoint, ctx)
                if ctx.trace is not None:
                    ctx.trace.add_span("render", started, time.time_ns(), prompt=ctx.prompt_ref,
                                       version=ctx.prompt_version)
                plan = plan_generation(request, self.limits, endpoint, defaults.get("max_tokens"))
            if key is not None:
                try:
                    reservation = await self.limiter.admit(key.id, plan.reserve)
                except RateLimitExceeded as limited:
                    ctx.headers["retry-after"] = str(limited.retry_after)
                    raise
            started = time.time_ns()
            version = await self.resolver.model(request.model)
            ctx.resolved(self.metrics, (version.name, str(version.version)), version.ref)
            if ctx.trace is not None:
                ctx.trace.add_span("resolve", started, time.time_ns(), ref=request.model, version=version.ref)
            call = Call(ctx, scope["path"], request, body, version, plan, defaults)
            ctx.series.running.inc()
            running = True
            reply = await self._dispatch(call, receive, send)
            status, error = reply.status, reply.error
        except GatewayError as failure:
            status, error = failure.status, failure.message
            await self._send_error(send, ctx, failure)
        except Exception:  # a bug: the client gets the request id, the log gets the traceback
            _log.exception("request %s failed", ctx.request_id)
            failure = internal_error(ctx.request_id)
            status, error = 500, failure.message
            await self._send_error(send, ctx, failure)
        finally:
            self.in_flight -= 1
            if running:
                ctx.series.running.dec()
            await self._finish(ctx, status, error, call, reply, reservation)

    async def _dispatch(self, call: Call, receive: Callable, send: Callable) -> Reply:
        """Run the backend under the disconnect / timeout guard and send its reply."""
        ctx = call.ctx
        # A stream is always watched; a whole answer only where the backend can stop its work.
        watched = ctx.stream or self.backend.cancels_unstreamed
        guard = RequestGuard(receive, self.limits.request_timeout) if watched else UNGUARDED
        started = time.time_ns()
        with guard:
            try:
                work = self.backend.embed if ctx.endpoint == "embeddings" else self.backend.generate
                reply = await work(call)
            except asyncio.CancelledError:
                failure = guard.failure()
                if failure is None:
                    raise
                raise failure from None
            finally:
                if ctx.trace is not None:
                    ctx.trace.add_span("generate", started, time.time_ns(), completion_tokens=ctx.completion_tokens)
            if reply.chunks is None:
                guard.close()
                headers = self._headers(ctx, reply.headers)
                headers.append((b"content-length", str(len(reply.body)).encode()))
                await send({"type": "http.response.start", "status": reply.status, "headers": headers})
                await send({"type": "http.response.body", "body": reply.body})
                return reply
            await send({"type": "http.response.start", "status": reply.status,
                        "headers": self._headers(ctx, reply.headers)})
            # The guard stops watching before the last piece: the server then reports a disconnect.
            writer = BodyWriter(send, before_end=guard.close)
            chunks = reply.chunks
            relay = getattr(chunks, "relay", None)  # a fleet stream writes from its connection's callbacks
            failure = None
            try:
                await (relay(writer) if relay is not None else relay_iterator(chunks, writer))
                return reply
            except asyncio.CancelledError:
                failure = guard.failure()
                if failure is None:
                    raise
            except GatewayError as error:  # the backend's own failure after the status line
                failure = error
            except Exception:
                _log.exception("request %s failed mid-stream", ctx.request_id)
                failure = internal_error(ctx.request_id)
            finally:
                writer.abandon()
                await chunks.aclose()
            guard.close()
            reply.status, reply.error = failure.status, failure.message
            if failure.status == 499:
                return reply  # nobody is listening
            # In-band, as vLLM and OpenAI report an error once the status line is out, as an event of
            # its own even when the failure cut one short.
            event = writer.event_break() + b"data: " + orjson.dumps(failure.body()) + b"\n\n" + _DONE
            await send({"type": "http.response.body", "body": event})
            return reply

    @staticmethod
    def _headers(ctx: RequestContext, extra: list) -> list:
        return [(k.encode(), v.encode("latin-1", "replace")) for k, v in ctx.headers.items()] + extra

    async def _send_error(self, send: Callable, ctx: RequestContext, failure: GatewayError) -> None:
        if failure.status == 499:
            return  # nobody is listening
        try:
            await send_json(send, failure.status, failure.body(), self._headers(ctx, []))
        except Exception:  # the response had started (or the client left): nothing more to say
            pass

    # ---------------------------------------------------------------------------------- finish

    async def _finish(self, ctx: RequestContext, status: int, error: Optional[str], call: Optional[Call],
                      reply: Optional[Reply], reservation: Any) -> None:
        if reservation is not None:
            try:
                await reservation.settle(ctx.prompt_tokens + ctx.completion_tokens)
            except Exception:  # a shared store that went away must not fail the answered request
                _log.warning("request %s: settling its rate-limit reservation failed", ctx.request_id,
                             exc_info=True)
        latency = time.perf_counter() - ctx.arrival
        self.metrics.count_request(ctx.labels, ctx.endpoint, status)
        series = ctx.series
        if series is not None:
            series.e2e.observe(latency)
            series.prompt_tokens.inc(ctx.prompt_tokens)
            series.generation_tokens.inc(ctx.completion_tokens)
            if status < 400 and ctx.endpoint != "embeddings":
                series.request_prompt_tokens.observe(ctx.prompt_tokens)
                series.request_generation_tokens.observe(ctx.completion_tokens)
        if ctx.trace is not None:
            self._trace(ctx, status, error, latency, call, reply)
        if self.capture is not None and call is not None and ctx.endpoint != "embeddings" and (
                status == 200 or ctx.completion_tokens):
            self.capture.submit(self._capture_record(ctx, status, latency, call, reply))

    def _trace(self, ctx: RequestContext, status: int, error: Optional[str], latency: float,
               call: Optional[Call], reply: Optional[Reply]) -> None:
        trace = ctx.trace
        trace.end_ns = time.time_ns()
        trace.usage = (ctx.prompt_tokens, ctx.completion_tokens)
        trace.attributes.update({
            "llmops.request_id": ctx.request_id, "llmops.status": status,
            "llmops.prompt_tokens": ctx.prompt_tokens, "llmops.completion_tokens": ctx.completion_tokens,
            "llmops.latency_ms": round(latency * 1000, 3), "llmops.time_to_first_token_ms": ctx.ttft_ms,
        })
        if ctx.client_request_id:
            trace.set_tag("llmops.client_request_id", ctx.client_request_id)
        if ctx.key_id is not None:
            trace.set_tag("llmops.key_id", ctx.key_id)
        if call is not None:
            trace.inputs = _inputs(call)
        trace.outputs = reply.outputs if reply is not None else None
        trace.error = error
        self.tracer.submit(trace)

    def _capture_record(self, ctx: RequestContext, status: int, latency: float, call: Call,
                        reply: Optional[Reply]) -> Callable[[], dict]:
        record = {
            "time": ctx.arrival_ns / 1e9, "request_id": ctx.request_id, "key_id": ctx.key_id,
            "endpoint": ctx.endpoint, "model": ctx.model, "model_version": ctx.model_version,
            "prompt_ref": ctx.prompt_ref, "prompt_version": ctx.prompt_version, "status": status,
            "finish_reasons": [ctx.finish_reasons.get(i) for i in sorted(ctx.finish_reasons)] or None,
            "prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
            "latency_ms": round(latency * 1000, 3), "ttft_ms": ctx.ttft_ms,
        }
        fields = reply.capture if reply is not None else None

        def build() -> dict:  # on the capture thread: parsing and decoding stay off the request path
            if fields is not None:
                record.update(fields())
            if record.get("prompt_text") is None:
                inputs = _inputs(call)
                text = inputs.get("prompt") if "prompt" in inputs else inputs.get("messages")
                record["prompt_text"] = text if isinstance(text, str) else orjson.dumps(text).decode()
            return record

        return build


def _inputs(call: Call) -> dict:
    """What the request asked, for traces and capture (the rendered messages or prompt)."""
    body = call.body
    if call.ctx.endpoint == "chat.completions":
        return {"messages": body.get("messages")}
    if call.ctx.endpoint == "completions":
        return {"prompt": body.get("prompt")}
    return {"input": body.get("input")}
