"""Rate limits: one battery over both limiters (in-process buckets and a real `redis-server`), then what
only one of them does (a fake clock for the in-process refill; Redis's start-up and outage errors)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from llmops.errors import ConfigError
from llmops.gateway.auth import AuthConfig, hash_key
from llmops.gateway.errors import GatewayError
from llmops.gateway.ratelimit import LocalRateLimiter, RateLimitExceeded, Reservation, create_rate_limiter
from tests.services import free_port, redis_server


def _auth(store: str | None = None, **limits) -> AuthConfig:
    keys = [{"id": "limited", "sha256": hash_key("sk-a"), **limits}, {"id": "free", "sha256": hash_key("sk-b")}]
    return AuthConfig(enabled=True, keys=keys, rate_limit_store=store)


@pytest.fixture(scope="module")
def redis_url():
    with redis_server() as url:
        yield url


@pytest.fixture(params=["local", "redis"])
def make_limiter(request):
    """`make_limiter(**limits)` -> a limiter of the key `limited` (with a `free` key beside it)."""

    def make(**limits):
        store = None
        if request.param == "redis":
            store = request.getfixturevalue("redis_url")
            import redis

            with redis.Redis.from_url(store) as client:
                client.flushdb()
        return create_rate_limiter(_auth(store, **limits))

    return make


def _run(limiter, coroutine):
    """Run `coroutine`, then close `limiter` in the same event loop (Redis connections belong to one)."""

    async def run_and_close():
        try:
            return await coroutine
        finally:
            await limiter.close()

    return asyncio.run(run_and_close())


def test_requests_per_minute_refuses_with_429_and_retry_after(make_limiter):
    limiter = make_limiter(requests_per_minute=3)

    async def scenario():
        for _ in range(3):
            await limiter.admit("limited", 10)
        with pytest.raises(RateLimitExceeded) as caught:
            await limiter.admit("limited", 10)
        return caught.value

    error = _run(limiter, scenario())
    assert error.status == 429 and 1 <= error.retry_after <= 20  # one request per 20 s
    assert error.body()["error"]["type"] == "rate_limit_error"
    assert "'limited'" in error.message and "3 requests per minute" in error.message


def test_tokens_are_reserved_at_admission_and_unused_ones_refunded(make_limiter):
    limiter = make_limiter(tokens_per_minute=600)

    async def scenario():
        first = await limiter.admit("limited", 500)  # 100 left
        with pytest.raises(RateLimitExceeded) as caught:
            await limiter.admit("limited", 200)  # a second long request cannot pass before the first ends
        assert "600 tokens per minute" in caught.value.message
        await first.settle(100)  # used 100 of 500: 400 come back
        await first.settle(100)  # idempotent: nothing more comes back
        second = await limiter.admit("limited", 450)
        with pytest.raises(RateLimitExceeded):
            await limiter.admit("limited", 200)
        await second.settle(450)

    _run(limiter, scenario())


def test_using_more_than_reserved_charges_the_excess(make_limiter):
    limiter = make_limiter(tokens_per_minute=600)

    async def scenario():
        reservation = await limiter.admit("limited", 100)
        await reservation.settle(500)  # 400 more than reserved: the bucket is at 100
        with pytest.raises(RateLimitExceeded) as caught:
            await limiter.admit("limited", 300)
        return caught.value

    assert 15 <= _run(limiter, scenario()).retry_after <= 21  # 200 missing at 10 tokens/s


def test_a_request_larger_than_the_minute_passes_once_then_the_key_waits(make_limiter):
    limiter = make_limiter(tokens_per_minute=600)

    async def scenario():
        reservation = await limiter.admit("limited", 900)  # a full bucket lets it through, 300 in debt
        await reservation.settle(900)
        with pytest.raises(RateLimitExceeded) as caught:
            await limiter.admit("limited", 0)  # even a request that reserves nothing waits out the debt
        return caught.value

    assert 25 <= _run(limiter, scenario()).retry_after <= 31


def test_keys_without_limits_take_the_fast_path(make_limiter):
    limiter = make_limiter(requests_per_minute=1)

    async def scenario():
        for _ in range(2000):
            reservation = await limiter.admit("free", 10_000)
            assert reservation is Reservation.NONE
            await reservation.settle(10_000)
        assert await limiter.admit("unknown-key", 5) is Reservation.NONE

    _run(limiter, scenario())


def test_concurrent_admissions_never_overspend(make_limiter):
    """100 concurrent reservations of 50 against 1,000 tokens: exactly 20 pass (less the refill)."""
    limiter = make_limiter(tokens_per_minute=1000)

    async def one():
        try:
            await limiter.admit("limited", 50)
            return True
        except RateLimitExceeded:
            return False

    async def scenario():
        return sum(await asyncio.gather(*(one() for _ in range(100))))

    assert 20 <= _run(limiter, scenario()) <= 22


# ----------------------------------------------------------------------------- in-process only


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_buckets_refill_with_time():
    clock = _Clock()
    limiter = LocalRateLimiter({"k": (3, 600)}, clock)

    async def scenario():
        for _ in range(3):
            await limiter.admit("k", 0)
        with pytest.raises(RateLimitExceeded) as caught:
            await limiter.admit("k", 0)
        assert caught.value.retry_after == 20
        clock.now += 19.5
        with pytest.raises(RateLimitExceeded) as caught:
            await limiter.admit("k", 0)
        assert caught.value.retry_after == 1
        clock.now += 0.5
        await limiter.admit("k", 0)

    _run(limiter, scenario())


# ---------------------------------------------------------------------------------- Redis only


def test_unreachable_redis_is_a_start_up_error_naming_the_url():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError) as caught:
        create_rate_limiter(_auth(url, tokens_per_minute=100))
    assert url in str(caught.value) and "rate_limit_store" in str(caught.value)


def test_rate_limit_store_must_be_a_redis_url():
    with pytest.raises(ValueError, match="redis://HOST:PORT/DB"):
        _auth("http://127.0.0.1:6379")


def test_redis_buckets_are_namespaced_per_key_and_expire(redis_url):
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    limiter = create_rate_limiter(_auth(redis_url, requests_per_minute=10, tokens_per_minute=600))

    async def scenario():
        await limiter.admit("limited", 60)

    _run(limiter, scenario())
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        state = client.hgetall("llmops:ratelimit:{limited}")
        ttl = client.pttl("llmops:ratelimit:{limited}")
    assert float(state["t"]) == pytest.approx(540, abs=5) and float(state["r"]) == pytest.approx(9, abs=0.1)
    assert 1000 < ttl <= 8000  # gone once both buckets would be full again (6 s for the tokens, plus 1 s)


def test_redis_outage_after_start_is_a_503_for_limited_keys_only():
    async def scenario(limiter):
        await limiter.admit("limited", 1)
        return limiter

    with redis_server() as url:
        limiter = create_rate_limiter(_auth(url, tokens_per_minute=100))
        loop = asyncio.new_event_loop()
        loop.run_until_complete(scenario(limiter))
    # the server is gone now
    with pytest.raises(GatewayError) as caught:
        loop.run_until_complete(limiter.admit("limited", 1))
    assert caught.value.status == 503 and caught.value.code == "rate_limit_store_unavailable"
    assert loop.run_until_complete(limiter.admit("free", 1)) is Reservation.NONE
    with contextlib.suppress(Exception):
        loop.run_until_complete(limiter.close())
    loop.close()


def test_redis_expiry_covers_the_emptier_bucket_when_both_limits_are_equal(redis_url):
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    limiter = create_rate_limiter(_auth(redis_url, requests_per_minute=60, tokens_per_minute=60))

    async def scenario():
        reservation = await limiter.admit("limited", 60)  # the token bucket is empty, the request one nearly full
        await reservation.settle(60)

    _run(limiter, scenario())
    with redis.Redis.from_url(redis_url) as client:
        assert client.pttl("llmops:ratelimit:{limited}") > 50_000  # a full minute to refill the tokens
