"""A minimal pooled HTTP/1.1 client for the upstream hot path: asyncio Protocol + httptools' C parser.

Why not aiohttp or httpx: at one request in flight a proxied request on a small box cost about
1.5 ms of CPU through aiohttp's client (request and response objects, multidicts, timers, a stream
reader task per body) against the 1.5 ms the whole gateway may spend (benchmarks/gateway_overhead.py).
This client does only what the proxy needs: POST or GET a byte body to a keep-alive connection,
read the status and headers, then either the whole body or its chunks as they arrive. Connections
are kept per origin (LIFO, so warm ones are reused); a reused connection that the server had
already closed is retried once on a fresh one, as browsers and aiohttp do.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Callable, Optional
from urllib.parse import urlsplit

__all__ = ["HttpClient", "HttpResponse", "HttpConnectionError", "HttpConnectError"]


class HttpConnectionError(ConnectionError):
    """The connection failed or closed before the response was complete."""


class HttpConnectError(HttpConnectionError):
    """No connection could be opened: no byte of the request left this process (safe to retry anywhere)."""


class HttpResponse:
    """A response: `status` and `headers` (lower-case str keys) once `request()` returned; then
    `read()` for the whole body, or `watch()`, `listen()` and `read_nowait()` for its pieces as they
    come, and `release()` or `close()`."""

    __slots__ = ("_conn", "status", "headers", "_chunks", "_waiter", "_listener", "_done", "_error", "received",
                 "_timeout", "_last", "_timer")

    def __init__(self, conn: "_Connection"):
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque = collections.deque()
        self._waiter: Optional[asyncio.Future] = None
        self._listener: Optional[Callable[[], None]] = None
        self._done = False
        self._error: Optional[BaseException] = None
        self.received = False  # any byte of the response arrived
        self._timeout = 0.0
        self._last = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None

    def _wake(self) -> None:
        if self._listener is not None:
            if not self._conn.feeding:  # else data_received calls it once the whole read is parsed
                self._listener()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float) -> None:
        loop = self._conn.loop
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def read(self, timeout: float) -> bytes:
        """The whole body (waits until it is complete)."""
        while not self._done and self._error is None:
            await self._wait(timeout)
        if self._error is not None:
            raise self._error
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def watch(self, timeout: float) -> None:
        """Fail the body (a TimeoutError from `read_nowait`) once `timeout` seconds pass without a
        piece of it; for streams, read with `listen` and `read_nowait`."""
        loop = self._conn.loop
        self._timeout = timeout
        self._last = loop.time()
        # One watchdog per `timeout` rather than a timer per piece: pieces may come every millisecond.
        self._timer = loop.call_later(timeout, self._watchdog)

    def _watchdog(self) -> None:
        if self._done or self._error is not None:
            return
        loop = self._conn.loop
        idle = loop.time() - self._last
        if idle >= self._timeout:
            self._error = asyncio.TimeoutError("the upstream server stopped sending")
            self._wake()
        else:
            self._timer = loop.call_later(self._timeout - idle, self._watchdog)

    def read_nowait(self) -> Optional[bytes]:
        """The body bytes that arrived since the last call, all of them in one piece; b"" once the
        body is complete; None when nothing new arrived yet (`listen` tells when it does).

        Raises:
            HttpConnectionError / asyncio.TimeoutError: the body broke off, or stopped (`watch`).
        """
        chunks = self._chunks
        if chunks:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            conn = self._conn
            if conn.paused:
                conn.resume()
            self._last = conn.loop.time()
            return data
        if self._error is not None:
            raise self._error
        return b"" if self._done else None

    @property
    def complete(self) -> bool:
        """The whole body arrived and `read_nowait` returned all of it."""
        return self._done and self._error is None and not self._chunks

    def listen(self, listener: Optional[Callable[[], None]]) -> None:
        """Call `listener()` whenever more of the body arrives, it ends, or it fails: from the protocol
        callback itself, once per read from the socket, so that a relay forwards each piece without a
        task switch. None stops it."""
        self._listener = listener

    def release(self) -> None:
        """Return the connection to the pool (closed instead if the body was not read to the end)."""
        if self._timer is not None:
            self._timer.cancel()
        self._conn.finish(reuse=self._done and self._error is None)

    def close(self) -> None:
        """Close the connection (a client that went away: the server sees it and can stop)."""
        if self._timer is not None:
            self._timer.cancel()
        if not self._done and self._error is None:
            self._error = HttpConnectionError("closed by the gateway")
            self._wake()
        self._conn.finish(reuse=False)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError("the upstream server did not answer in time"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one response at a time."""

    _PAUSE_AT = 1 << 20  # bytes buffered before reading from the server pauses

    def __init__(self, pool: "_Pool", loop: asyncio.AbstractEventLoop):
        import httptools

        self.pool = pool
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Optional[HttpResponse] = None
        self.closed = False
        self.paused = False
        self.used = 0
        self.feeding = False  # inside parser.feed_data: a listener waits for the whole read
        self._header_name = b""

    # asyncio.Protocol
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection is unusable
            self._abort(HttpConnectionError("unexpected data from the server"))
            return
        response.received = True
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except Exception as error:
            self.feeding = False
            self._abort(HttpConnectionError(f"malformed response: {error}"))
            return
        self.feeding = False
        if response._listener is not None:
            response._listener()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        response = self.response
        if response is not None and not response._done:
            headers = response.headers
            if (exc is None and response.status and "content-length" not in headers
                    and "transfer-encoding" not in headers):
                response._done = True  # a body delimited by the end of the connection (HTTP/1.0 style)
            else:
                response._error = HttpConnectionError(f"the server closed the connection ({exc or 'EOF'})")
            response._wake()
        self.pool.forget(self)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        self.response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        chunks = response._chunks
        chunks.append(body)
        response._wake()
        if not self.paused and len(chunks) > 16 and sum(map(len, chunks)) > self._PAUSE_AT:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self.response
        response._done = True
        if not self.parser.should_keep_alive():
            self.closed = True
        response._wake()

    # ours
    def resume(self) -> None:
        self.paused = False
        if not self.closed:
            self.transport.resume_reading()

    def _abort(self, error: BaseException) -> None:
        response = self.response
        if response is not None and not response._done:
            response._error = error
            response._wake()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def finish(self, reuse: bool) -> None:
        self.response = None
        if reuse and not self.closed:
            self.pool.put(self)
        else:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool.forget(self)


class _Pool:
    def __init__(self, host: str, port: int, limit: int):
        self.host = host
        self.port = port
        self.limit = limit
        self.idle: list[_Connection] = []

    def put(self, conn: _Connection) -> None:
        if len(self.idle) < self.limit:
            self.idle.append(conn)
        else:
            conn.closed = True
            conn.transport.close()

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def acquire(self, connect_timeout: float) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, loop), self.host, self.port), connect_timeout)
        except (OSError, asyncio.TimeoutError) as error:
            raise HttpConnectError(f"cannot connect to {self.host}:{self.port}: {type(error).__name__}: {error}") \
                from None
        return conn

    def close(self) -> None:
        for conn in self.idle:
            conn.closed = True
            conn.transport.close()
        self.idle.clear()


class HttpClient:
    """Pooled keep-alive HTTP/1.1 (plain `http://` only; put TLS termination next to the replicas).

    Args:
        connect_timeout: Seconds to open a connection.
        max_idle: Idle connections kept per origin.
    """

    def __init__(self, connect_timeout: float = 5.0, max_idle: int = 512):
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._pools: dict[str, tuple[_Pool, bytes]] = {}

    def _pool(self, base_url: str) -> tuple[_Pool, bytes]:
        entry = self._pools.get(base_url)
        if entry is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http":
                raise ValueError(f"{base_url}: only http:// upstreams are supported")
            port = parts.port or 80
            entry = (_Pool(parts.hostname or "127.0.0.1", port, self.max_idle), f"{parts.hostname}:{port}".encode())
            self._pools[base_url] = entry
        return entry

    async def request(self, method: str, base_url: str, path: str, body: bytes = b"",
                      headers: Optional[dict[str, str]] = None, timeout: float = 300.0) -> HttpResponse:
        """Send a request; return once the status line and headers arrived.

        Raises:
            HttpConnectError: no connection could be opened (nothing was sent).
            HttpConnectionError / OSError: sending failed, or the server closed first.
            asyncio.TimeoutError: no headers within `timeout`.
        """
        pool, host = self._pool(base_url)
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), b"host: ", host, b"\r\ncontent-length: ",
                str(len(body)).encode(), b"\r\n"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"\r\n")
        payload = b"".join(head) + body
        for attempt in (0, 1):
            try:
                conn = await pool.acquire(self.connect_timeout)
            except HttpConnectError as error:
                if attempt == 0:
                    raise
                # The first attempt's bytes went out on a connection that then died: the server may
                # have acted on them, so this is no longer a request nothing of which was sent.
                raise HttpConnectionError(str(error)) from None
            reused = conn.used > 0
            conn.used += 1
            response = HttpResponse(conn)
            conn.response = response
            conn.transport.write(payload)
            try:
                while not response.status and response._error is None:
                    await response._wait(timeout)
                if response._error is not None:
                    raise response._error
                return response
            except HttpConnectionError:
                conn.finish(reuse=False)
                if reused and not response.received and attempt == 0:
                    continue  # the server had closed this idle connection: once more on a fresh one
                raise
            except BaseException:
                conn.finish(reuse=False)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every idle connection."""
        for pool, _ in self._pools.values():
            pool.close()
        self._pools.clear()
