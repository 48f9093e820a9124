"""Cancel a request's work when its client goes away or its time runs out.

The guard cancels the task serving the request (one watcher task and one timer per request, no
extra task around the work), and `failure()` turns that cancellation into the status the request
ends with: 499 (client closed the request) or 504 (timeout). Cancelling the work is what stops a
generation: the in-process engine drops the sequences, and a fleet replica sees its connection close.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

from llmops.gateway.errors import GatewayError

__all__ = ["RequestGuard", "UNGUARDED"]


class RequestGuard:
    """A context manager watching `receive` for `http.disconnect` and timing `timeout` seconds."""

    def __init__(self, receive: Callable, timeout: float):
        self.receive = receive
        self.timeout = timeout
        self.reason: Optional[str] = None
        self._task: Any = None
        self._timer: Any = None
        self._watcher: Any = None

    def __enter__(self) -> "RequestGuard":
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timer = loop.call_later(self.timeout, self._fire, "timeout")
        self._watcher = loop.create_task(self._watch())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self._fire("disconnect")

    def _fire(self, reason: str) -> None:
        if self.reason is None and self._timer is not None:
            self.reason = reason
            self._task.cancel()

    def close(self) -> None:
        """Stop watching (before the last byte goes out: the server then reports a disconnect)."""
        if self._timer is not None:
            self._timer.cancel()
            self._watcher.cancel()
            self._timer = None

    def failure(self) -> Optional[GatewayError]:
        """The error a cancellation by this guard stands for; None when something else cancelled."""
        if self.reason is None:
            return None
        uncancel = getattr(self._task, "uncancel", None)  # Python 3.11+: the cancel is handled here
        if uncancel is not None:
            uncancel()
        if self.reason == "disconnect":
            return GatewayError(499, "client closed the request", code="client_closed_request")
        return GatewayError(504, f"the request took longer than {self.timeout:g} s and was cancelled",
                            code="timeout")


class _Unguarded:
    """For work that needs no guard (a fleet's non-streamed request: the replica finishes it, bounded by
    `engine.upstream.timeout`); spares the watcher task and timer on the fleet's hot path."""

    def __enter__(self) -> "_Unguarded":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def failure(self) -> None:
        return None


UNGUARDED = _Unguarded()
