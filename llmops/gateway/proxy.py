"""The lean pass-through path for `engine.kind: upstream`: a raw ASGI app, no FastAPI on the hot path.

Per request it reads the body once (orjson), authenticates the key, checks its scope and rate,
resolves `model` through the registry (cached, refreshed in the background), rewrites `model` to
the resolved version (`NAME/VERSION`), forwards the bytes to a replica over pooled keep-alive
connections and passes the answer back unchanged, chunk by chunk for streams. Everything else
(metrics, captured traffic) is a few dict and counter operations; Parquet writing happens on the
capture thread. Paths it does not serve go to `fallback` (the full FastAPI app) when one is given.

Measured cost (benchmarks/gateway_overhead.py, 2 shared cores): about 1 ms of CPU per non-streamed
request and 3 ms per 20-chunk stream, against LiteLLM's 20-25 ms and 50-60 ms.

Behaviours to know: when capture is on, `return_token_ids: true` is added to the forwarded body (vLLM
then returns prompt and completion token ids); when capture or a key's tokens-per-minute limit needs
the usage of a stream, `stream_options.include_usage` is turned on, so such clients get one extra,
choice-less usage chunk at the end (as OpenAI sends it). A client that disconnects from a stream
closes the upstream connection (vLLM aborts the generation); a non-streamed request runs to its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import orjson

from llmops.errors import NotFoundError
from llmops.gateway.auth import AuthConfig, KeyChecker
from llmops.gateway.capture import CaptureWriter
from llmops.gateway.engines.upstream import ReplicaPool, UpstreamConfig
from llmops.gateway.errors import GatewayError, error_body, from_exception
from llmops.gateway.ratelimit import RateLimiter, RateLimitExceeded
from llmops.gateway.serving import new_request_id

__all__ = ["UpstreamRoute", "RegistryResolver", "UpstreamProxy"]

_log = logging.getLogger(__name__)
_GENERATION_PATHS = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions",
                     "/v1/embeddings": "embeddings"}
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class UpstreamRoute:
    """Where a ref goes upstream: its version, the model name to send, the adapter to load first."""

    ref: str
    version_ref: str
    labels: tuple[str, str]
    upstream_model: str
    adapter: Optional[tuple[str, str]] = None  # (lora_name, lora_path)


class RegistryResolver:
    """Registry refs -> `UpstreamRoute`, cached; re-resolved every `refresh_interval` seconds.

    Args:
        allowed: Refs clients may request (None: any registered model).
        refresh_interval: Seconds between re-resolutions of the cached refs (a moved alias).
        served_model_names: Version ref -> name the replicas serve it under.
    """

    def __init__(self, allowed: Optional[list[str]] = None, refresh_interval: float = 5.0,
                 served_model_names: Optional[dict[str, str]] = None):
        self.allowed = allowed
        self.refresh_interval = refresh_interval
        self.served = served_model_names or {}
        self._routes: dict[str, UpstreamRoute] = {}
        self._task: Optional[asyncio.Task] = None

    async def route(self, ref: str) -> UpstreamRoute:
        """The route of `ref`. Raises NotFoundError / RegistryError (404 / 400) for bad refs."""
        cached = self._routes.get(ref)
        if cached is not None:
            return cached
        if self.allowed is not None and ref not in self.allowed:
            raise GatewayError(404, f"The model `{ref}` does not exist or is not served by this gateway "
                               f"(served: {', '.join(self.allowed)})", param="model", code="model_not_found")
        try:
            route = await asyncio.to_thread(self._resolve, ref)
        except Exception as error:
            raise from_exception(error, param="model") from None
        self._routes[ref] = route
        return route

    def _resolve(self, ref: str) -> UpstreamRoute:
        from llmops.registry import parse_ref, resolve_model_ref

        parse_ref(ref)
        version = resolve_model_ref(ref)
        labels = (version.name, str(version.version))
        if version.kind == "adapter":
            source = version.source
            path = str(version.local_path()) if source.startswith(("/", "file:")) else source
            return UpstreamRoute(ref, version.ref, labels, version.ref, (version.ref, path))
        return UpstreamRoute(ref, version.ref, labels, self.served.get(version.ref, version.ref))

    def start(self) -> None:
        """Start re-resolving cached refs in the background."""
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            for ref in list(self._routes):
                try:
                    self._routes[ref] = await asyncio.to_thread(self._resolve, ref)
                except NotFoundError:  # deleted: the next request gets a clear 404
                    self._routes.pop(ref, None)
                except Exception:  # registry unreachable: keep serving the cached version
                    _log.exception("re-resolving %s failed", ref)

    async def close(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class UpstreamProxy:
    """ASGI app forwarding OpenAI generation requests to a `ReplicaPool`.

    Args:
        upstream: The fleet's config.
        resolver: An object with `async route(ref) -> UpstreamRoute` (and optional start / close).
        auth: API keys (`AuthConfig`); None disables auth.
        capture: A `CaptureWriter`, or None.
        metrics: A `GatewayMetrics`, or None.
        max_body_bytes: Largest request body accepted (413 beyond).
        fallback: ASGI app for every other path (404 without one).
        shutdown_timeout: Seconds shutdown waits for requests in flight.
        tracing: A `TracingConfig`: one trace per request (ids, versions, key id, status, timings;
            no bodies), written in bulk off the request path; None or disabled: no traces.
    """

    def __init__(self, upstream: UpstreamConfig, resolver: Any, auth: Optional[AuthConfig] = None,
                 capture: Optional[CaptureWriter] = None, metrics: Any = None, max_body_bytes: int = 1_048_576,
                 fallback: Optional[Callable] = None, shutdown_timeout: float = 10.0, tracing: Any = None):
        self.pool = ReplicaPool(upstream)
        self.resolver = resolver
        self.keys = KeyChecker(auth or AuthConfig())
        self.limiter = RateLimiter()
        for key in (auth.keys if auth else []):
            self.limiter.configure(key.id, key.requests_per_minute, key.tokens_per_minute)
        self._has_token_limits = any(k.tokens_per_minute for k in (auth.keys if auth else []))
        self.capture = capture
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.fallback = fallback
        self.shutdown_timeout = shutdown_timeout
        self.tracing = tracing
        self.tracer: Any = None
        self.in_flight = 0

    # ---------------------------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        """Open the replica pool and start the background tasks."""
        await self.pool.start()
        if self.tracing is not None and self.tracing.enabled:
            from llmops.gateway.tracing import create_tracer

            self.tracer = await asyncio.to_thread(create_tracer, self.tracing)
        if hasattr(self.resolver, "start"):
            self.resolver.start()

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Wait up to `drain_timeout` s for requests in flight, then close the pool and flush capture."""
        deadline = time.monotonic() + drain_timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if hasattr(self.resolver, "close"):
            await self.resolver.close()
        await self.pool.close()
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            endpoint = _GENERATION_PATHS.get(path)
            if endpoint is not None and scope["method"] == "POST":
                return await self._generation(scope, receive, send, endpoint, path)
            if path == "/health" and scope["method"] == "GET":
                return await _send_json(send, 200, {"status": "ok", "upstreams": self.pool.stats()})
            if path == "/v1/models" and scope["method"] == "GET" and self.fallback is None:
                return await self._models(scope, send)
            if path == "/metrics" and self.metrics is not None and self.fallback is None:
                return await self._metrics(scope, send)
        elif kind == "lifespan" and self.fallback is None:
            return await self._lifespan(receive, send)
        if self.fallback is not None:
            return await self.fallback(scope, receive, send)
        if kind == "http":
            await _send_json(send, 404, error_body(404, f"{scope['method']} {scope['path']}: not found"))

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown(self.shutdown_timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _models(self, scope: dict, send: Callable) -> None:
        try:
            self.keys.authenticate(_header(scope, b"authorization"))
        except GatewayError as error:
            return await _send_json(send, error.status, error.body())
        refs = getattr(self.resolver, "allowed", None)
        if refs is None:
            refs = await asyncio.to_thread(_registered_refs)
        cards = []
        for ref in refs:
            try:
                route = await self.resolver.route(ref)
            except GatewayError:
                continue
            cards.append({"id": ref, "object": "model", "created": 0, "owned_by": "llmops",
                          "root": route.version_ref})
        await _send_json(send, 200, {"object": "list", "data": cards})

    async def _metrics(self, scope: dict, send: Callable) -> None:
        if self.keys.enabled and self.keys.metrics_require_key:
            try:
                self.keys.authenticate(_header(scope, b"authorization"))
            except GatewayError as error:
                return await _send_json(send, error.status, error.body())
        from llmops.gateway.metrics import CONTENT_TYPE

        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE.encode())]})
        await send({"type": "http.response.body", "body": self.metrics.render()})

    # --------------------------------------------------------------------------------- hot path

    async def _generation(self, scope: dict, receive: Callable, send: Callable, endpoint: str, path: str) -> None:
        arrival = time.perf_counter()
        arrival_wall = time.time()
        request_id = (_header(scope, b"x-request-id") or "")[:128] or new_request_id()
        headers = [(b"x-request-id", request_id.encode())]
        labels = ("", "")
        key_id = None
        self.in_flight += 1
        try:
            key = self.keys.authenticate(_header(scope, b"authorization"))
            key_id = key.id if key is not None else None
            raw = await _read_body(receive, self.max_body_bytes)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as error:
                raise GatewayError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
            if not isinstance(body, dict):
                raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise GatewayError(400, "'model' is a required property", param="model",
                                   code="missing_required_parameter")
            self.keys.check_scope(key, model)
            if key_id is not None:
                self.limiter.admit(key_id)
            route = await self.resolver.route(model)
            labels = route.labels
            headers.append((b"x-llmops-model-version", route.version_ref.encode()))
            stream = body.get("stream") is True
            capture = self.capture is not None and endpoint != "embeddings"
            needs_usage = capture or (self._has_token_limits and key_id is not None)
            if route.upstream_model != model or (stream and needs_usage) or capture:
                body["model"] = route.upstream_model
                if capture:
                    body["return_token_ids"] = True  # vLLM: prompt and completion token ids in the answer
                if stream and needs_usage:
                    options = body.get("stream_options") or {}
                    body["stream_options"] = {**options, "include_usage": True}
                raw = orjson.dumps(body)
            if stream:
                return await self._stream(scope, receive, send, path, raw, route, headers, request_id, key_id,
                                          body, arrival, arrival_wall, needs_usage)
            reply = await self.pool.send(path, raw, False, route.adapter, request_id)
            headers.append((b"content-type", reply.headers.get("content-type", "application/json").encode()))
            headers.append((b"content-length", str(len(reply.body)).encode()))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
            usage = None
            if needs_usage or self.metrics is not None:
                usage = _usage(reply.body) if reply.status == 200 else None
            self._finish(endpoint, labels, reply.status, arrival, usage, key_id, request_id, route)
            if capture and reply.status == 200:
                self._capture(request_id, key_id, endpoint, model, route, body, reply.body, False,
                              arrival_wall, time.perf_counter() - arrival, None)
        except GatewayError as error:
            extra = [(b"retry-after", str(error.retry_after).encode())] if isinstance(error, RateLimitExceeded) else []
            await _send_json(send, error.status, error.body(), headers + extra)
            self._finish(endpoint, labels, error.status, arrival, None, None, request_id, None, error.message)
        except Exception as error:  # a bug: log it, answer 500 in OpenAI's shape
            _log.exception("request %s failed", request_id)
            failure = from_exception(error)
            await _send_json(send, failure.status, failure.body(), headers)
            self._finish(endpoint, labels, failure.status, arrival, None, None, request_id, None, failure.message)
        finally:
            self.in_flight -= 1

    async def _stream(self, scope: dict, receive: Callable, send: Callable, path: str, raw: bytes,
                      route: UpstreamRoute, headers: list, request_id: str, key_id: Optional[str], body: dict,
                      arrival: float, arrival_wall: float, keep: bool) -> None:
        endpoint = _GENERATION_PATHS[path]
        reply = await self.pool.send(path, raw, True, route.adapter, request_id)
        response = reply.response
        headers.append((b"content-type", reply.headers.get("content-type", "text/event-stream").encode()))
        headers.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        chunks: list[bytes] = []
        first: Optional[float] = None
        failed = False
        # The client's disconnect closes the upstream response, which ends the loop below and makes
        # the replica abort the generation.
        watcher = asyncio.ensure_future(_disconnected(receive))

        def close_upstream(_: Any) -> None:
            response.close()

        watcher.add_done_callback(close_upstream)
        disconnected = False
        try:
            async for chunk in response.chunks(self.pool.config.timeout):
                if first is None:
                    first = time.perf_counter()
                if keep:
                    chunks.append(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as error:  # the replica broke off mid-stream: no retry once bytes went out
            failed = not watcher.done()
            if failed:
                _log.warning("request %s: upstream stream broke off: %s", request_id, error)
                message = error_body(502, "the upstream server broke off the stream", code="upstream_error")
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(message) + b"\n\n",
                            "more_body": True})
        finally:
            disconnected = watcher.done()
            watcher.remove_done_callback(close_upstream)
            watcher.cancel()
            self.pool.release(reply, failed=failed, closed=disconnected)
        await send({"type": "http.response.body", "body": b""})
        status = 499 if disconnected else 502 if failed else reply.status
        data = b"".join(chunks) if keep else b""
        usage = _stream_usage(data) if keep and reply.status == 200 else None
        self._finish(endpoint, route.labels, status, arrival, usage, key_id, request_id, route,
                     ttft=None if first is None else first - arrival)
        if self.capture is not None and reply.status == 200:
            ttft = None if first is None else first - arrival
            self._capture(request_id, key_id, endpoint, body.get("model"), route, body, data, True, arrival_wall,
                          time.perf_counter() - arrival, ttft)

    def _finish(self, endpoint: str, labels: tuple, status: int, arrival: float, usage: Optional[tuple],
                key_id: Optional[str], request_id: str = "", route: Optional[UpstreamRoute] = None,
                error: Optional[str] = None, ttft: Optional[float] = None) -> None:
        if usage is not None and key_id is not None:
            self.limiter.record_tokens(key_id, usage[0] + usage[1])
        if self.tracer is not None:
            self._trace(endpoint, status, arrival, usage, key_id, request_id, route, error, ttft)
        m = self.metrics
        if m is None:
            return
        m.requests.labels(labels[0], labels[1], endpoint, str(status)).inc()
        if labels[0]:
            m.e2e.labels(*labels).observe(time.perf_counter() - arrival)
            if usage is not None:
                m.prompt_tokens.labels(*labels).inc(usage[0])
                m.generation_tokens.labels(*labels).inc(usage[1])

    def _trace(self, endpoint: str, status: int, arrival: float, usage: Optional[tuple], key_id: Optional[str],
               request_id: str, route: Optional[UpstreamRoute], error: Optional[str], ttft: Optional[float]) -> None:
        trace = self.tracer.begin(endpoint)
        if trace is None:  # not sampled
            return
        latency = time.perf_counter() - arrival
        trace.start_ns = trace.end_ns = time.time_ns()
        trace.start_ns -= int(latency * 1e9)
        trace.set_tag("llmops.request_id", request_id)  # a tag: searchable on every store (`llmops lineage`)
        trace.attributes.update({"llmops.status": status,
                                 "llmops.latency_ms": round(latency * 1000, 3),
                                 "llmops.time_to_first_token_ms": None if ttft is None else round(ttft * 1000, 3)})
        if key_id is not None:
            trace.set_tag("llmops.key_id", key_id)
        if route is not None:
            trace.set_tag("llmops.model", route.ref)
            trace.set_tag("llmops.model_version", route.version_ref)
        if usage is not None:
            trace.usage = usage
        trace.error = error
        self.tracer.submit(trace)

    def _capture(self, request_id: str, key_id: Optional[str], endpoint: str, model: Any, route: UpstreamRoute,
                 body: dict, data: bytes, stream: bool, arrival_wall: float, latency: float,
                 ttft: Optional[float]) -> None:
        requested = model if route is None else route.ref

        def build() -> dict:  # runs on the capture thread
            record = _parse_stream(data) if stream else _parse_response(data)
            prompt = body.get("messages") if endpoint == "chat.completions" else body.get("prompt")
            record.update(time=arrival_wall, request_id=request_id, key_id=key_id, endpoint=endpoint,
                          model=requested, model_version=route.version_ref,
                          prompt_ref=body.get("prompt") if endpoint == "chat.completions" else None,
                          status=200, latency_ms=round(latency * 1000, 3),
                          ttft_ms=None if ttft is None else round(ttft * 1000, 3),
                          prompt_text=orjson.dumps(prompt).decode() if prompt is not None else None)
            return record

        self.capture.submit(build)


# -------------------------------------------------------------------------------------- helpers


def _registered_refs() -> list[str]:
    from llmops.registry import search_models

    refs = []
    for model in search_models():
        if model.latest_version is not None:
            refs.append(model.name)
            refs.extend(f"{model.name}@{alias}" for alias in sorted(model.aliases))
    return refs


def _header(scope: dict, name: bytes) -> Optional[str]:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(receive: Callable, limit: int) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise GatewayError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        return body
    parts, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        parts.append(chunk)
    return b"".join(parts)


async def _disconnected(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(send: Callable, status: int, payload: Any, headers: Optional[list] = None) -> None:
    data = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": (headers or []) + [*_JSON, (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _usage(data: bytes) -> Optional[tuple[int, int]]:
    try:
        usage = orjson.loads(data).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def _stream_usage(data: bytes) -> Optional[tuple[int, int]]:
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    start = data.rfind(b"data:", 0, at)
    end = data.find(b"\n", at)
    try:
        usage = orjson.loads(data[start + 5:end if end > 0 else None]).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def _parse_response(data: bytes) -> dict:
    """Capture fields of a non-streamed OpenAI (or vLLM, with token ids) answer."""
    answer = orjson.loads(data)
    choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
    usage = answer.get("usage") or {}
    token_ids = [c.get("token_ids") for c in choices]
    return {
        "prompt_token_ids": answer.get("prompt_token_ids") or (choices[0].get("prompt_token_ids") if choices else None),
        "completion_token_ids": token_ids if all(t is not None for t in token_ids) and token_ids else None,
        "finish_reasons": [c.get("finish_reason") for c in choices],
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "completion_text": [(c.get("message") or {}).get("content") if "message" in c else c.get("text")
                            for c in choices],
    }


def _parse_stream(data: bytes) -> dict:
    """Capture fields of an SSE stream, assembled per choice."""
    texts: dict[int, list[str]] = {}
    ids: dict[int, list[int]] = {}
    finish: dict[int, Optional[str]] = {}
    prompt_ids = usage = None
    for line in data.split(b"\n"):
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        chunk = orjson.loads(line[5:])
        prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            texts.setdefault(index, []).append(delta.get("content") or choice.get("text") or "")
            if choice.get("token_ids") is not None:
                ids.setdefault(index, []).extend(choice["token_ids"])
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
    order = sorted(texts)
    usage = usage or {}
    return {
        "prompt_token_ids": prompt_ids,
        "completion_token_ids": [ids[i] for i in order] if order and all(i in ids for i in order) else None,
        "finish_reasons": [finish.get(i) for i in order],
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "completion_text": ["".join(texts[i]) for i in order],
    }
