"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

Each limit is a bucket holding up to one minute's allowance that refills continuously. Admission
takes one unit from the request bucket and *reserves* the request's worst case from the token
bucket (the pipeline passes `n × max_tokens` plus the prompt tokens), so a burst of long requests
cannot all pass before any of them is charged. When the request finishes, `Reservation.settle`
refunds what it did not use (or charges the excess). A request that reserves more than a whole
minute's allowance passes once the bucket is full and leaves it in debt, which the key pays by
waiting. A refused request gets a 429 with `Retry-After` (whole seconds until it would pass).

    limiter = create_rate_limiter(auth_config)
    reservation = await limiter.admit(key_id, tokens)   # raises RateLimitExceeded
    ...
    await reservation.settle(used_tokens)                # idempotent
    await limiter.close()

Without `auth.rate_limit_store` the buckets live in this process (`LocalRateLimiter`); with
`rate_limit_store: redis://HOST:PORT/DB` every gateway process shares one bucket per key in Redis
(`ratelimit_redis.RedisRateLimiter`). Keys without limits take a fast path with no bookkeeping.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

from llmops.gateway.errors import GatewayError

__all__ = ["RateLimitExceeded", "Reservation", "TokenBucket", "LocalRateLimiter", "create_rate_limiter",
           "refused"]


class RateLimitExceeded(GatewayError):
    """A 429 whose `retry_after` (seconds) goes into the `Retry-After` header."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(429, message, code="rate_limit_exceeded")
        self.retry_after = retry_after


def refused(key_id: str, which: str, limit: int, wait_seconds: float) -> RateLimitExceeded:
    """The 429 for `key_id` over its `limit` `which` ("requests" / "tokens") per minute."""
    retry = max(1, math.ceil(wait_seconds))
    return RateLimitExceeded(f"Rate limit reached for API key {key_id!r}: {limit} {which} per minute. "
                             f"Try again in {retry} s.", retry)


class Reservation:
    """Tokens reserved for one admitted request; `settle` refunds the unused part once.

    The shared `Reservation.NONE` (keys without a tokens-per-minute limit) settles as a no-op.
    """

    __slots__ = ("_settle", "reserved", "settled")
    NONE: "Reservation"

    def __init__(self, reserved: int = 0, settle: Optional[Callable[[int], Any]] = None):
        self.reserved = reserved
        self._settle = settle
        self.settled = settle is None

    async def settle(self, used_tokens: int) -> None:
        """Refund `reserved - used_tokens` (charge the excess when more was used). Idempotent."""
        if self.settled:
            return
        self.settled = True
        delta = self.reserved - max(int(used_tokens), 0)
        if delta:
            result = self._settle(delta)
            if result is not None:  # the Redis limiter returns a coroutine
                await result


Reservation.NONE = Reservation()


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

    def give_back(self, amount: float) -> None:
        """Return `amount` units (a refund), never above the capacity; a negative amount charges."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class LocalRateLimiter:
    """Buckets per key id in this process (limits are per gateway process).

    Args:
        limits: key id -> (requests_per_minute, tokens_per_minute), None meaning unlimited.
        clock: Monotonic seconds (tests pass a fake clock).
    """

    def __init__(self, limits: dict[str, tuple[Optional[int], Optional[int]]],
                 clock: Callable[[], float] = time.monotonic):
        self._requests = {k: TokenBucket(r, clock) for k, (r, _) in limits.items() if r}
        self._tokens = {k: TokenBucket(t, clock) for k, (_, t) in limits.items() if t}

    async def admit(self, key_id: str, tokens: int = 0) -> Reservation:
        """Count one request of `key_id` and reserve `tokens` of its tokens-per-minute budget.

        Raises:
            RateLimitExceeded: the key is over its requests or tokens per minute.
        """
        requests = self._requests.get(key_id)
        bucket = self._tokens.get(key_id)
        if requests is None and bucket is None:
            return Reservation.NONE
        tokens = max(int(tokens), 0)
        wait_requests = requests.wait_time(1) if requests is not None else 0.0
        # Even a request that reserves nothing waits while the key is in debt.
        wait_tokens = bucket.wait_time(max(tokens, 1)) if bucket is not None else 0.0
        if wait_requests > 0 or wait_tokens > 0:
            if wait_requests >= wait_tokens:
                raise refused(key_id, "requests", int(requests.capacity), wait_requests)
            raise refused(key_id, "tokens", int(bucket.capacity), wait_tokens)
        if requests is not None:
            requests.take(1)
        if bucket is None:
            return Reservation.NONE
        bucket.take(tokens)
        return Reservation(tokens, bucket.give_back)

    async def close(self) -> None:
        """Nothing to release (the same call as the Redis limiter's)."""


def create_rate_limiter(auth: Any, clock: Callable[[], float] = time.monotonic) -> Any:
    """The rate limiter of an `AuthConfig`: in-process buckets, or Redis with `rate_limit_store`.

    Raises:
        ConfigError: `rate_limit_store` is set and Redis cannot be reached (the message names the URL).
    """
    limits = {key.id: (key.requests_per_minute, key.tokens_per_minute) for key in auth.keys}
    store = getattr(auth, "rate_limit_store", None)
    if store:
        from llmops.gateway.ratelimit_redis import RedisRateLimiter

        return RedisRateLimiter(store, limits)
    return LocalRateLimiter(limits, clock)
