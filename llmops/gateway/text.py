"""Incremental detokenisation with stop sequences, for streamed and whole responses alike.

Text is emitted only once it is final: an incomplete UTF-8 character (the tokenizer decodes it as
U+FFFD) and any tail that could still become a stop sequence are held back until the next token
settles them, so a stop string never leaks into a stream.
"""

from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["TextAssembler"]


class TextAssembler:
    """Turns generated token ids into text deltas, cutting the text at the first stop sequence.

    Args:
        decode: token ids -> text (special tokens skipped).
        stop: Stop sequences; the returned text never contains them.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.text = ""  # the text emitted so far
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add one token; return the newly final text (possibly empty). Sets `stopped` at a stop sequence."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        full = self.decode(self.token_ids)
        if self.stop:
            cut = min((i for i in (full.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.stopped = True
                return self._emit(full[:max(cut, len(self.text))])
        if full.endswith("\ufffd"):
            return ""  # the rest of a multi-byte character comes with the next token
        return self._emit(full[: len(full) - self._held_back(full)])

    def finish(self) -> str:
        """The text still held back, at the end of generation."""
        if self.stopped:
            return ""
        return self._emit(self.decode(self.token_ids))

    def _emit(self, upto: str) -> str:
        if len(upto) <= len(self.text):
            return ""
        delta, self.text = upto[len(self.text):], upto
        return delta

    def _held_back(self, full: str) -> int:
        """Length of the longest tail of `full` that starts some stop sequence."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(full)), longest, -1):
                if stop.startswith(full[-size:]):
                    longest = size
                    break
        return longest
