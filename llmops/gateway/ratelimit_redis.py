"""Rate limits shared by every gateway process: one token bucket per key in Redis.

`auth.rate_limit_store: redis://HOST:PORT/DB` selects this limiter. Each key id owns one Redis hash,
`llmops:ratelimit:{KEY_ID}` (the braces make it one cluster hash slot), with the level and the
last-refill time of its request bucket and its token bucket. Admission and settlement are Lua
scripts (`EVALSHA`), so the refill, the check and the take happen atomically in Redis however many
gateways call at once, and the refill uses Redis's own `TIME`, so the clocks of the gateway hosts
do not matter. A hash expires once its buckets would be full again, so idle keys cost no memory.

Limits travel with each call (`ARGV`), so a gateway's config is what applies to its requests; give
every gateway of a fleet the same keys. While Redis cannot be reached, requests of limited keys get
a 503 `rate_limit_store_unavailable` (limits are a promise; keys without limits are unaffected).
"""

from __future__ import annotations

import logging
from typing import Optional

from llmops.errors import ConfigError
from llmops.gateway.errors import GatewayError
from llmops.gateway.ratelimit import Reservation, refused

__all__ = ["RedisRateLimiter", "ADMIT_SCRIPT", "SETTLE_SCRIPT"]

_log = logging.getLogger(__name__)
_PREFIX = "llmops:ratelimit:"

# Shared by both scripts: `now` from Redis, and refill(level_field, stamp_field, capacity) -> level.
# Floats go back to the client as strings: Redis truncates Lua numbers to integers.
_REFILL = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'r', 'rs', 't', 'ts')
local function refill(level, stamp, capacity)
  level = tonumber(level); stamp = tonumber(stamp)
  if level == nil or stamp == nil then return capacity end
  return math.min(capacity, level + math.max(0, now - stamp) * capacity / 60)
end
local function expire(buckets)
  -- the hash is worth keeping until every bucket is full again; buckets: {{capacity, level}, ...}
  local ms = 1000
  for _, bucket in ipairs(buckets) do
    ms = math.max(ms, math.ceil((bucket[1] - bucket[2]) * 60000 / bucket[1]) + 1000)
  end
  redis.call('PEXPIRE', KEYS[1], ms)
end
"""

ADMIT_SCRIPT = _REFILL + """
-- ARGV: requests per minute (0: none), tokens per minute (0: none), tokens to reserve
local rpm = tonumber(ARGV[1]); local tpm = tonumber(ARGV[2]); local cost = tonumber(ARGV[3])
local r, t = 0, 0
local wait_r, wait_t = 0, 0
if rpm > 0 then
  r = refill(state[1], state[2], rpm)
  if r < 1 then wait_r = (1 - r) * 60 / rpm end
end
if tpm > 0 then
  t = refill(state[3], state[4], tpm)
  local need = math.min(math.max(cost, 1), tpm)
  if t < need then wait_t = (need - t) * 60 / tpm end
end
if wait_r > 0 or wait_t > 0 then
  return {0, tostring(wait_r), tostring(wait_t)}
end
local buckets = {}
if rpm > 0 then
  r = r - 1
  redis.call('HSET', KEYS[1], 'r', tostring(r), 'rs', tostring(now))
  table.insert(buckets, {rpm, r})
end
if tpm > 0 then
  t = t - cost
  redis.call('HSET', KEYS[1], 't', tostring(t), 'ts', tostring(now))
  table.insert(buckets, {tpm, t})
end
expire(buckets)
return {1, tostring(r), tostring(t)}
"""

SETTLE_SCRIPT = _REFILL + """
-- ARGV: tokens per minute, tokens to give back (negative: to charge), requests per minute (0: none)
local tpm = tonumber(ARGV[1]); local delta = tonumber(ARGV[2])
local t = math.min(tpm, refill(state[3], state[4], tpm) + delta)
redis.call('HSET', KEYS[1], 't', tostring(t), 'ts', tostring(now))
local buckets = {{tpm, t}}
if state[1] and state[2] then  -- keep the request bucket's state alive as long as it matters too
  local rpm = tonumber(ARGV[3])
  if rpm and rpm > 0 then table.insert(buckets, {rpm, refill(state[1], state[2], rpm)}) end
end
expire(buckets)
return tostring(t)
"""


def _unavailable(url: str, error: Exception) -> GatewayError:
    _log.warning("rate limit store %s: %s", url, error)
    return GatewayError(503, "The rate limit store is unavailable; try again shortly.",
                        code="rate_limit_store_unavailable")


class RedisRateLimiter:
    """Token buckets in Redis, shared by every gateway that points at the same database.

    Args:
        url: `redis://[:PASSWORD@]HOST:PORT/DB` (or `rediss://`, `unix://`).
        limits: key id -> (requests_per_minute, tokens_per_minute), None meaning unlimited.
        timeout: Seconds a Redis call may take before the request gets a 503.

    Raises:
        MissingExtraError: the `redis` package is not installed.
        ConfigError: Redis does not answer at `url` (checked here, at start-up).
    """

    def __init__(self, url: str, limits: dict[str, tuple[Optional[int], Optional[int]]], timeout: float = 2.0):
        from llmops.extras import require

        require("redis", "auth.rate_limit_store")
        import redis
        import redis.asyncio

        self.url = url
        self._limits = {k: (r or 0, t or 0) for k, (r, t) in limits.items() if r or t}
        try:
            with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) as probe:
                probe.ping()
                self._admit_sha = probe.script_load(ADMIT_SCRIPT)
                self._settle_sha = probe.script_load(SETTLE_SCRIPT)
        except (redis.RedisError, ValueError, OSError) as error:
            raise ConfigError(f"auth.rate_limit_store: cannot reach Redis at {url}: {error}. "
                              "Start redis-server there or fix the URL.") from None
        self._errors = (redis.RedisError, OSError)
        self._no_script = redis.exceptions.NoScriptError
        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    async def _call(self, sha: str, script: str, key: str, *args: object) -> object:
        try:
            return await self._client.evalsha(sha, 1, key, *args)
        except self._no_script:  # Redis restarted and lost its script cache
            return await self._client.eval(script, 1, key, *args)

    async def admit(self, key_id: str, tokens: int = 0) -> Reservation:
        """Count one request of `key_id` and reserve `tokens` of its tokens-per-minute budget.

        Raises:
            RateLimitExceeded: the key is over its requests or tokens per minute (429).
            GatewayError: Redis did not answer (503).
        """
        limits = self._limits.get(key_id)
        if limits is None:
            return Reservation.NONE
        rpm, tpm = limits
        tokens = max(int(tokens), 0)
        key = f"{_PREFIX}{{{key_id}}}"
        try:
            allowed, first, second = await self._call(self._admit_sha, ADMIT_SCRIPT, key, rpm, tpm, tokens)
        except self._errors as error:
            raise _unavailable(self.url, error) from None
        if not allowed:
            wait_requests, wait_tokens = float(first), float(second)
            if wait_requests >= wait_tokens:
                raise refused(key_id, "requests", rpm, wait_requests)
            raise refused(key_id, "tokens", tpm, wait_tokens)
        if not tpm:
            return Reservation.NONE

        async def give_back(delta: int) -> None:
            try:
                await self._call(self._settle_sha, SETTLE_SCRIPT, key, tpm, delta, rpm)
            except self._errors as error:  # the request is done; a lost refund only errs on the safe side
                _log.warning("rate limit store %s: could not settle %d token(s) of %r: %s",
                             self.url, delta, key_id, error)

        return Reservation(tokens, give_back)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
