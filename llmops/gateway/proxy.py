"""The fleet backend (`engine.kind: upstream`): requests forwarded as bytes to OpenAI-compatible replicas.

The pipeline has validated the request, rendered its registry prompt into the body, checked its
limits and resolved its model version. Here `model` is rewritten to the name the replicas serve that
version under (`NAME/VERSION`, or the adapter loaded through vLLM's `/v1/load_lora_adapter`), a
`max_tokens` is filled in when the client set none (so every generation has the bound its rate limit
reserved), and the bytes go to a replica over pooled keep-alive connections
(`engines/upstream.ReplicaPool`). The answer comes back unchanged, relayed as it arrives for streams
(`_Stream`), while its usage, finish reasons and chunk times feed the same `RequestContext` calls as
in-process tokens.

Behaviours to know: when capture is on, `return_token_ids: true` is added (vLLM then returns prompt
and completion token ids). Streams always ask the replica for `stream_options.include_usage` (the
usage settles the rate limit and feeds the token metrics); the usage chunk is passed on only to
clients that asked for it. Time to first token and inter-token latency are measured on streams
(per chunk as it arrives). A replica's error answer reaches the client in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Optional

import orjson

from llmops.gateway.errors import GatewayError, error_body
from llmops.gateway.pipeline import Call, Reply

__all__ = ["UpstreamRoute", "FleetBackend"]

_JSON = [(b"content-type", b"application/json")]
_MAX_HELD = 1 << 20  # bytes of an unfinished line held back, at most: a longer one goes out in pieces


@dataclass(frozen=True)
class UpstreamRoute:
    """Where a version goes upstream: the model name to send, the adapter to load first."""

    version_ref: str
    upstream_model: str
    adapter: Optional[tuple[str, str]] = None  # (lora_name, lora_path)


class FleetBackend:
    """A fleet of OpenAI-compatible replicas (`vllm serve --enable-lora`).

    Args:
        config: `GatewayConfig` with `engine.kind: upstream`.
        capture: True when traffic capture is on (token ids are then requested from the replicas).
    """

    cancels_unstreamed = False
    """A non-streamed request runs to its end on the replica (bounded by `engine.upstream.timeout`);
    streams are cancelled when the client leaves, which closes the replica's connection."""

    def __init__(self, config: Any, capture: bool = False):
        from llmops.gateway.engines.upstream import ReplicaPool

        upstream = config.engine.upstream
        self.pool = ReplicaPool(upstream)
        self.served = upstream.served_model_names
        self.capture = capture
        self._routes: dict[str, UpstreamRoute] = {}

    async def start(self) -> None:
        """Open the connection pool and start health checks."""
        await self.pool.start()

    async def prepare(self, version: Any) -> None:
        """Work out (once per version) the model name and adapter the replicas get."""
        if version.ref in self._routes:
            return
        if version.kind == "adapter":
            source = version.source
            path = str(await asyncio.to_thread(version.local_path)) if source.startswith(("/", "file:")) else source
            route = UpstreamRoute(version.ref, version.ref, (version.ref, path))
        else:
            route = UpstreamRoute(version.ref, self.served.get(version.ref, version.ref))
        self._routes[version.ref] = route

    async def _route(self, version: Any) -> UpstreamRoute:
        route = self._routes.get(version.ref)
        if route is None:
            await self.prepare(version)
            route = self._routes[version.ref]
        return route

    # ---------------------------------------------------------------------------------- requests

    async def generate(self, call: Call) -> Reply:
        """Forward a chat or text completion."""
        body, request = call.body, call.request
        if request.requested_max_tokens() is None:
            body["max_tokens"] = call.plan.max_tokens
        if self.capture:
            body["return_token_ids"] = True  # vLLM: prompt and completion token ids in the answer
        stream = bool(request.stream)
        if stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return await self._forward(call, stream, request.include_usage() if stream else True)

    async def embed(self, call: Call) -> Reply:
        """Forward an embeddings request."""
        return await self._forward(call, False, True)

    async def _forward(self, call: Call, stream: bool, client_wants_usage: bool) -> Reply:
        ctx = call.ctx
        route = await self._route(call.version)
        body = call.body
        body["model"] = route.upstream_model
        try:
            raw = orjson.dumps(body)
        except orjson.JSONEncodeError as error:  # e.g. nesting orjson will not write back
            raise GatewayError(400, f"the request body cannot be forwarded: {error}", code="invalid_json") from None
        reply = await self.pool.send(call.path, raw, stream, route.adapter, ctx.request_id)
        if reply.status >= 400 and reply.response is not None:  # an error answer to a stream request
            reply.body = await reply.response.read(self.pool.config.timeout)
            self.pool.release(reply)
        content_type = reply.headers.get("content-type", "application/json").encode()
        if reply.status >= 400:
            return Reply(reply.status, _JSON, _openai_error(reply.status, reply.body))
        if stream:
            chunks = self._chunks(reply, ctx, client_wants_usage)
            return Reply(reply.status, [(b"content-type", content_type), (b"cache-control", b"no-cache")],
                         chunks=chunks, capture=self._capture_fields(chunks))
        data = reply.body
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise GatewayError(502, "the upstream server sent a malformed answer", code="upstream_error") from None
        _account(ctx, answer)
        texts = [(c.get("message") or {}).get("content") if "message" in c else c.get("text")
                 for c in answer.get("choices") or [] if isinstance(c, dict)]
        capture = (lambda: _parse_response(answer)) if self.capture else None
        return Reply(reply.status, [(b"content-type", content_type)], data, outputs=texts or None, capture=capture)

    def _chunks(self, reply: Any, ctx: Any, client_wants_usage: bool) -> "_Stream":
        return _Stream(self.pool, reply, ctx, client_wants_usage, keep=self.capture)

    @staticmethod
    def _capture_fields(chunks: "_Stream"):
        if chunks.kept is None:
            return None
        return lambda: _parse_stream(b"".join(chunks.kept))

    def health(self) -> dict:
        """Per-replica state, for `/health`."""
        return {"upstreams": self.pool.stats()}

    async def close(self) -> None:
        """Stop health checks and close every connection."""
        await self.pool.close()


class _Stream:
    """A streamed reply, relayed to the client as the replica sends it, reporting chunk times, finish
    reasons and the usage.

    Each read from the replica (one or several SSE events, bytes unchanged but for the usage event
    the client did not ask for) is written to the client from the protocol callback that read it: a
    proxy forwards what it reads, so events that arrive together leave together, none waits for the
    next, and no task wakes up per piece. Only whole lines go out (a line cut between two reads waits
    for its end): each is parsed whole when it carries the usage, and when the replica breaks off,
    the error event that ends the stream does not land inside a half-sent one. The last piece carries
    the end of the response.
    """

    def __init__(self, pool: Any, reply: Any, ctx: Any, client_wants_usage: bool, keep: bool):
        self.pool, self.reply, self.ctx = pool, reply, ctx
        self.client_wants_usage = client_wants_usage
        self.kept: Optional[list] = [] if keep else None
        self._open = True
        self._response = reply.response
        self._response.watch(pool.config.timeout)
        self._writer: Any = None
        self._done: Optional[asyncio.Future] = None
        self._held = b""  # the start of a line whose end has not arrived

    async def relay(self, writer: Any) -> None:
        """Write the stream through `writer` (`asgi.BodyWriter`) until its end; the caller then calls
        `aclose()` whatever happened (which also stops listening to the connection).

        Raises:
            GatewayError: 502 when the replica broke off or stopped sending.
        """
        self._writer = writer
        self._done = asyncio.get_running_loop().create_future()
        self._response.listen(self._pump)  # until `_release` (the end, a failure, or `aclose`)
        self._pump()  # what arrived with the headers
        await self._done

    def _pump(self) -> None:
        """Forward what has arrived (a listener: runs in the connection's callbacks, never raises)."""
        done, writer, response = self._done, self._writer, self._response
        while not done.done():
            if writer.busy:
                return  # the client's socket is full: what arrives waits (the connection pauses past 1 MiB)
            try:
                chunk = response.read_nowait()
                if chunk is None:
                    return
                end = not chunk or response.complete
                if self._held:
                    chunk, self._held = self._held + chunk, b""
                if not end and not chunk.endswith(b"\n"):  # hold a line back until its end arrives
                    cut = chunk.rfind(b"\n") + 1
                    if len(chunk) - cut <= _MAX_HELD:  # past that, a line goes out in pieces
                        chunk, self._held = chunk[:cut], chunk[cut:]
                if chunk:
                    chunk = self._arrived(chunk)
                if end:
                    self._release()
                pending = writer.write(chunk, end) if chunk or end else None
            except (OSError, asyncio.TimeoutError):  # the replica broke off: no retry once bytes went out
                self._release(failed=True)
                done.set_exception(GatewayError(502, "the upstream server broke off the stream",
                                                code="upstream_error"))
                return
            except Exception as error:  # a callback must not raise: the pipeline reports it
                done.set_exception(error)
                return
            if pending is not None:
                pending.add_done_callback(self._written)
                return
            if end:
                done.set_result(None)
            # else: once more, for a failure that came while a piece waited (nothing else wakes us)

    def _written(self, pending: asyncio.Task) -> None:
        """A piece that had to wait for the client went out: go on (or report why it did not)."""
        done = self._done
        if done.done():
            return
        if pending.cancelled():
            done.cancel()
        elif pending.exception() is not None:
            done.set_exception(pending.exception())
        elif not self._open:  # that piece ended the response
            done.set_result(None)
        else:
            self._pump()

    def _arrived(self, chunk: bytes) -> bytes:
        self.ctx.token(time.time_ns())
        if self.kept is not None:
            self.kept.append(chunk)
        # Cheap byte tests first: only a chunk that carries the usage or a finish reason (a string,
        # where the others have null; vLLM writes no space after the colon, Python's json does) is parsed.
        if b'"usage"' in chunk or b'"finish_reason":"' in chunk or b'"finish_reason": "' in chunk:
            chunk = self._account(chunk)
        return chunk

    async def aclose(self) -> None:
        """Give the connection back; closing it early (the client left) makes the replica abort."""
        self._release(closed=True)

    def _release(self, failed: bool = False, closed: bool = False) -> None:
        if self._open:
            self._open = False
            self._response.listen(None)  # closing the connection wakes its listener
            self.pool.release(self.reply, failed=failed, closed=closed)

    def _account(self, chunk: bytes) -> bytes:
        out = []
        for event in chunk.split(b"\n\n"):
            payload = event[5:].strip() if event.startswith(b"data:") else b""
            if payload and payload != b"[DONE]":
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict):
                    for choice in data.get("choices") or []:
                        if isinstance(choice, dict) and choice.get("finish_reason"):
                            self.ctx.finish_choice(choice.get("index", 0), choice["finish_reason"])
                    usage = data.get("usage")
                    if isinstance(usage, dict):
                        self.ctx.usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
                        if not data.get("choices") and not self.client_wants_usage:
                            continue  # the usage chunk the gateway asked for, not the client
            out.append(event)
        return b"\n\n".join(out)


# -------------------------------------------------------------------------------------- helpers


def _account(ctx: Any, answer: Any) -> None:
    """Usage and finish reasons of a whole answer."""
    if not isinstance(answer, dict):
        return
    usage = answer.get("usage")
    if isinstance(usage, dict):
        ctx.usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict):
            ctx.finish_choice(choice.get("index", 0), choice.get("finish_reason"))


def _openai_error(status: int, data: bytes) -> bytes:
    """A replica's error answer in OpenAI's shape (vLLM's `code` is the status as an int; older
    vLLM answers a flat `{"object": "error", "message": ...}`)."""
    try:
        answer = orjson.loads(data)
        detail = answer.get("error", answer) if isinstance(answer, dict) else {}
        message = detail.get("message") if isinstance(detail, dict) else None
        param = detail.get("param") if isinstance(detail, dict) else None
    except orjson.JSONDecodeError:
        message = param = None
    message = message if isinstance(message, str) else data.decode("utf-8", "replace")[:500] or "upstream error"
    return orjson.dumps(error_body(status, message, param if isinstance(param, str) else None, "upstream_error"))


def _parse_response(answer: dict) -> dict:
    """Capture fields of a non-streamed OpenAI (or vLLM, with token ids) answer."""
    choices = sorted((c for c in answer.get("choices") or [] if isinstance(c, dict)), key=lambda c: c.get("index", 0))
    token_ids = [c.get("token_ids") for c in choices]
    return {
        "prompt_token_ids": answer.get("prompt_token_ids") or (choices[0].get("prompt_token_ids") if choices else None),
        "completion_token_ids": token_ids if token_ids and all(t is not None for t in token_ids) else None,
        "completion_text": [str((c.get("message") or {}).get("content") if "message" in c else c.get("text"))
                            for c in choices],
    }


def _parse_stream(data: bytes) -> dict:
    """Capture fields of an SSE stream, assembled per choice."""
    texts: dict[int, list[str]] = {}
    ids: dict[int, list[int]] = {}
    prompt_ids = None
    for line in data.split(b"\n"):
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        chunk = orjson.loads(line[5:])
        prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            texts.setdefault(index, []).append(delta.get("content") or choice.get("text") or "")
            if choice.get("token_ids") is not None:
                ids.setdefault(index, []).extend(choice["token_ids"])
    order = sorted(texts)
    return {
        "prompt_token_ids": prompt_ids,
        "completion_token_ids": [ids[i] for i in order] if order and all(i in ids for i in order) else None,
        "completion_text": ["".join(texts[i]) for i in order],
    }
