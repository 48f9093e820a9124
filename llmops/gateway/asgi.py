"""The few ASGI and JSON primitives the pipeline needs: a bounded body, strict JSON, JSON replies,
and a body writer that relays streamed pieces from plain callbacks.

Strict JSON (orjson): invalid UTF-8, lone surrogates (`"\\ud800"`), numbers that overflow a double
and nesting beyond `max_depth` are 400s here, before any field is looked at, so no later step (a
tokenizer, a template, a serializer) meets them.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Optional

import orjson

from llmops.gateway.errors import GatewayError

__all__ = ["read_body", "parse_json", "header", "request_headers", "send_json", "JSON_HEADERS", "BodyWriter",
           "relay_iterator"]

JSON_HEADERS = [(b"content-type", b"application/json")]


def header(scope: dict, name: bytes) -> Optional[str]:
    """The value of request header `name` (lower-case bytes), None when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


_WANTED = (b"authorization", b"x-request-id", b"content-length")


def request_headers(scope: dict) -> dict[bytes, str]:
    """The request headers the pipeline reads (authorization, x-request-id, content-length), in one pass."""
    found = {}
    for key, value in scope["headers"]:
        if key in _WANTED:
            found[key] = value.decode("latin-1")
    return found


async def read_body(receive: Callable, limit: int, declared: Optional[str] = None) -> bytes:
    """The whole request body; a 413 GatewayError as soon as it exceeds `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                           code="request_too_large")
    message = await receive()
    body = message.get("body", b"")
    parts, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(499, "client closed the request", code="client_closed_request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        parts.append(chunk)
    if size > limit:
        raise GatewayError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
    return body if len(parts) == 1 else b"".join(parts)


def parse_json(raw: bytes, max_depth: int) -> dict:
    """The request body as a JSON object.

    Raises:
        GatewayError: 400 for anything but a valid UTF-8 JSON object nested at most `max_depth` deep.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise GatewayError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
    # Counting brackets is a C loop; only a body that could be deep is walked.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth_exceeds(data, max_depth):
        raise GatewayError(400, f"the request body nests arrays and objects deeper than {max_depth} levels",
                           code="invalid_json")
    return data


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
    return False


async def send_json(send: Callable, status: int, payload: Any, headers: Optional[list] = None) -> None:
    """Answer `payload` as JSON with `status` and extra `headers` ((bytes, bytes) pairs)."""
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": (headers or []) + [*JSON_HEADERS, (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class BodyWriter:
    """Sends a response's body pieces through ASGI `send` from plain callbacks, in order.

    A relay forwards each piece a replica sends from the protocol callback that read it, which saves
    a task switch per piece (benchmarks/gateway_overhead.py). ASGI's `send` is a coroutine, but
    uvicorn's finishes a body piece without suspending unless the client's socket buffer is full, so
    `write` runs it to its end on the spot. When it does suspend (a slow client), the rest runs on a
    task, which `write` returns: the caller holds the next pieces back until it is done. Under any
    other server (whose `send` may need to run inside a task) every piece goes through a task.

    Args:
        send: The ASGI `send` callable.
        before_end: Called just before the last piece (the end of the response) goes out.
    """

    def __init__(self, send: Callable, before_end: Callable[[], None]):
        self.send = send
        self.before_end = before_end
        self.pending: Optional[asyncio.Task] = None
        self._tail = b"\n\n"  # the last two bytes that went out
        owner = getattr(send, "__self__", None)
        self.inline = type(owner).__module__.startswith("uvicorn.protocols.http.")

    def write(self, body: bytes, end: bool = False) -> Optional[asyncio.Task]:
        """Send `body` (and the end of the response when `end`); None when it went out, else the task
        finishing it. Raises what `send` raises."""
        if end:
            self.before_end()
        if body:
            self._tail = body[-2:] if len(body) > 1 else self._tail[-1:] + body
        coroutine = self.send({"type": "http.response.body", "body": body, "more_body": not end})
        if not self.inline:
            self.pending = asyncio.ensure_future(coroutine)
            return self.pending
        try:
            awaited = coroutine.send(None)
        except StopIteration:
            return None
        self.pending = asyncio.ensure_future(_run_on(coroutine, awaited))
        return self.pending

    def event_break(self) -> bytes:
        """What ends an SSE event the body may have stopped inside (b"" between events), so that an
        event sent next stands on its own."""
        return b"" if self._tail == b"\n\n" else b"\n" if self._tail.endswith(b"\n") else b"\n\n"

    @property
    def busy(self) -> bool:
        """A piece is still waiting to go out: the next ones must wait for it."""
        return self.pending is not None and not self.pending.done()

    def abandon(self) -> None:
        """Cancel a piece still waiting to go out (the stream failed or the client left)."""
        if self.busy:
            self.pending.cancel()


async def _run_on(coroutine: Any, awaited: Any) -> None:
    """Run `coroutine`, suspended on the future `awaited` (None: a bare yield), to its end, as the
    task it was not started on would."""
    try:
        while True:
            if awaited is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait((awaited,))
            awaited = coroutine.send(None)
    except StopIteration:
        return
    finally:
        coroutine.close()  # cancelled: unwind `send` where it waits (it has not written this piece)


async def relay_iterator(chunks: AsyncIterator[bytes], writer: BodyWriter) -> None:
    """Write every piece of `chunks`, then the end of the response."""
    async for chunk in chunks:
        pending = writer.write(chunk)
        if pending is not None:
            await pending
    pending = writer.write(b"", end=True)
    if pending is not None:
        await pending
