"""`asgi.BodyWriter`: body pieces sent in order from plain callbacks, whether `send` finishes at once or
has to wait (a slow client), under uvicorn (run on the spot) or any other server (a task per piece)."""

from __future__ import annotations

import asyncio

from llmops.gateway.asgi import BodyWriter, relay_iterator


class _Server:
    """An ASGI `send` that records what went out and waits on `gate` while it is set (a full socket)."""

    def __init__(self):
        self.sent: list[tuple[bytes, bool]] = []
        self.gate: asyncio.Future | None = None

    async def send(self, message: dict) -> None:
        if self.gate is not None:
            await self.gate
        self.sent.append((message["body"], message["more_body"]))


class _UvicornLike(_Server):
    pass


_UvicornLike.__module__ = "uvicorn.protocols.http.httptools_impl"  # what BodyWriter checks to run inline


def test_uvicorn_send_runs_on_the_spot_and_a_waiting_one_finishes_on_a_task():
    async def scenario():
        server, ended = _UvicornLike(), []
        writer = BodyWriter(server.send, before_end=lambda: ended.append(len(server.sent)))
        assert writer.inline
        assert writer.write(b"a") is None and server.sent == [(b"a", True)]  # no task, no await
        server.gate = asyncio.get_running_loop().create_future()
        pending = writer.write(b"b")
        assert pending is not None and server.sent == [(b"a", True)]
        server.gate.set_result(None)
        await pending
        server.gate = None
        assert writer.write(b"c", end=True) is None
        assert server.sent == [(b"a", True), (b"b", True), (b"c", False)] and ended == [2]

    asyncio.run(scenario())


def test_abandoning_a_waiting_piece_never_sends_it():
    async def scenario():
        server = _UvicornLike()
        server.gate = asyncio.get_running_loop().create_future()
        writer = BodyWriter(server.send, before_end=lambda: None)
        pending = writer.write(b"late")
        writer.abandon()
        await asyncio.gather(pending, return_exceptions=True)
        server.gate.set_result(None)
        await asyncio.sleep(0)
        assert pending.cancelled() and server.sent == []

    asyncio.run(scenario())


def test_an_error_in_a_waiting_send_reaches_the_caller():
    async def scenario():
        server = _UvicornLike()
        server.gate = asyncio.get_running_loop().create_future()
        pending = BodyWriter(server.send, before_end=lambda: None).write(b"x")
        server.gate.set_exception(ConnectionResetError("client gone"))
        try:
            await pending
        except ConnectionResetError as error:
            return str(error)

    assert asyncio.run(scenario()) == "client gone"


def test_other_servers_get_every_piece_through_a_task_in_order():
    async def pieces():
        for piece in (b"1", b"2", b"3"):
            yield piece

    async def scenario():
        server = _Server()
        writer = BodyWriter(server.send, before_end=lambda: None)
        assert not writer.inline
        await relay_iterator(pieces(), writer)
        return server.sent

    assert asyncio.run(scenario()) == [(b"1", True), (b"2", True), (b"3", True), (b"", False)]


def test_event_break_ends_whatever_event_the_body_stopped_inside():
    async def scenario():
        server = _UvicornLike()
        writer = BodyWriter(server.send, before_end=lambda: None)
        breaks = [writer.event_break()]
        for piece in (b"data: {}\n\n", b"data: {}\n", b"data: {\"par", b"tial\"}\n", b"\n"):
            writer.write(piece)
            breaks.append(writer.event_break())
        return breaks

    assert asyncio.run(scenario()) == [b"", b"", b"\n", b"\n\n", b"\n", b""]
