"""Token events handed from the engine's worker thread to the event loops that wait for them.

All events of one decoding step go to each event loop in one `call_soon_threadsafe` callback, so a
loop is woken once per step rather than once per token.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from llmops.gateway.engines.base import TokenEvent

__all__ = ["TokenDeliveries", "discard"]


class TokenDeliveries:
    """Token events of one decoding step, handed to each event loop in one callback."""

    def __init__(self) -> None:
        self.pending: dict = {}

    def sink(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue,
             stream: bool = True) -> Callable[[TokenEvent], None]:
        """The `emit` function of one sequence; unless `stream`, events are held until the last one."""
        if stream:
            return lambda event: self.pending.setdefault(loop, []).append((events, event))
        held: list = []

        def emit(event: TokenEvent) -> None:
            held.append((events, event))
            if event.finish_reason is not None:
                self.pending.setdefault(loop, []).extend(held)
                held.clear()

        return emit

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed (server shutting down)
                pass


def discard(event: TokenEvent) -> None:
    """The `emit` of a sequence before `generate` connects it to its caller."""


def _put_all(items: list) -> None:
    for events, event in items:
        events.put_nowait(event)
