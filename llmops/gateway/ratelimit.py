"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

Each limit is a bucket holding up to one minute's allowance that refills continuously. A request
takes one unit from the request bucket before it runs; its tokens (prompt + completion) are taken
from the token bucket when it finishes, because only then are they known, so the token bucket may
go negative, and the key then waits until it is positive again. A refused request gets a 429 with
`Retry-After` (whole seconds until the request would pass). Limits are per gateway process.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

from llmops.gateway.errors import GatewayError

__all__ = ["TokenBucket", "RateLimiter", "RateLimitExceeded"]


class RateLimitExceeded(GatewayError):
    """A 429 whose `retry_after` (seconds) goes into the `Retry-After` header."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(429, message, code="rate_limit_exceeded")
        self.retry_after = retry_after


class TokenBucket:
    """`capacity` units that refill at `capacity / 60` per second (a per-minute allowance)."""

    __slots__ = ("capacity", "rate", "level", "stamp", "clock")

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> float:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.level

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` units are available (0 when they are now)."""
        level = self._refill()
        need = min(amount, self.capacity)  # a request larger than the bucket passes once it is full
        return 0.0 if level >= need else (need - level) / self.rate

    def take(self, amount: float) -> None:
        """Remove `amount` units (the level may go negative: a debt paid by waiting)."""
        self._refill()
        self.level -= amount


class RateLimiter:
    """Buckets per key id. Keys without limits pass without any bookkeeping."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def configure(self, key_id: str, requests_per_minute: Optional[int], tokens_per_minute: Optional[int]) -> None:
        """Set the limits of one key (None: unlimited)."""
        self._requests.pop(key_id, None)
        self._tokens.pop(key_id, None)
        if requests_per_minute:
            self._requests[key_id] = TokenBucket(requests_per_minute, self.clock)
        if tokens_per_minute:
            self._tokens[key_id] = TokenBucket(tokens_per_minute, self.clock)

    def admit(self, key_id: str) -> None:
        """Count one request of `key_id`.

        Raises:
            RateLimitExceeded: the key is over its requests or tokens per minute.
        """
        requests = self._requests.get(key_id)
        tokens = self._tokens.get(key_id)
        if requests is None and tokens is None:
            return
        wait_requests = requests.wait_time(1) if requests is not None else 0.0
        wait_tokens = tokens.wait_time(1) if tokens is not None else 0.0
        if wait_requests > 0 or wait_tokens > 0:
            which = "requests" if wait_requests >= wait_tokens else "tokens"
            limit = int((requests if which == "requests" else tokens).capacity)
            retry = max(1, math.ceil(max(wait_requests, wait_tokens)))
            raise RateLimitExceeded(f"Rate limit reached for API key {key_id!r}: {limit} {which} per minute. "
                                    f"Try again in {retry} s.", retry)
        if requests is not None:
            requests.take(1)

    def record_tokens(self, key_id: str, count: int) -> None:
        """Charge `count` tokens (prompt + completion) of a finished request to `key_id`."""
        tokens = self._tokens.get(key_id)
        if tokens is not None and count > 0:
            tokens.take(count)


# --- interim shim (the `pipeline` branch): the `limits` branch replaces this file with the real
# in-process and Redis limiters behind the same interface. ---


class _Reservation:
    """Tokens reserved at admission; `settle(used)` refunds the unused part (idempotent)."""

    def __init__(self, bucket: Optional[TokenBucket], reserved: int):
        self._bucket = bucket
        self._reserved = reserved
        self._settled = False

    async def settle(self, used_tokens: int) -> None:
        if self._settled or self._bucket is None:
            return
        self._settled = True
        self._bucket.take(min(used_tokens, self._reserved) - self._reserved)


class _AsyncLimiter:
    def __init__(self, auth) -> None:
        self._limiter = RateLimiter()
        for key in auth.keys:
            self._limiter.configure(key.id, key.requests_per_minute, key.tokens_per_minute)

    async def admit(self, key_id: str, tokens: int) -> _Reservation:
        self._limiter.admit(key_id)
        bucket = self._limiter._tokens.get(key_id)
        if bucket is not None:
            bucket.take(tokens)
        return _Reservation(bucket, tokens)

    async def close(self) -> None:
        return None


def create_rate_limiter(auth) -> _AsyncLimiter:
    """Per-key limits of an `AuthConfig` (interim in-process shim)."""
    return _AsyncLimiter(auth)
