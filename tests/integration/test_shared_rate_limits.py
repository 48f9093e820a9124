"""Two `llmops serve` processes share one tokens-per-minute budget per key through a real `redis-server`.

The gateways run on the upstream (fleet) backend in front of the fixed-latency replica of
`benchmarks/_fake_upstream.py` (every answer: 5 prompt + 20 completion tokens after 300 ms), and the
official `openai` client sends waves of concurrent requests to both. Per-process buckets would serve
about twice the budget; the shared bucket serves at most one minute's budget, plus what refilled during
the test, plus one request's reservation.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import free_port, redis_server, stop_process as _stop, wait_http as _wait

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("redis")

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-shared-budget-5e1d"
TOKENS_PER_MINUTE = 1000
MAX_TOKENS = 20
MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]




@pytest.fixture(scope="module")
def two_gateways(tiny_store, tmp_path_factory):
    import yaml

    from llmops.gateway.auth import hash_key

    folder = tmp_path_factory.mktemp("shared-limits")
    processes: list[subprocess.Popen] = []
    with tiny_store(folder) as db, redis_server() as redis_url:
        replica_port = free_port()
        replica = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "_fake_upstream.py"),
                                    str(replica_port), "300", str(MAX_TOKENS)])
        processes.append(replica)
        config = folder / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "kind": "gateway", "models": ["tiny@production"],
            "engine": {"kind": "upstream", "upstream": {"urls": [f"http://127.0.0.1:{replica_port}"]}},
            "tracing": {"enabled": False},
            "auth": {"enabled": True, "rate_limit_store": redis_url, "keys": [
                {"id": "team-shared", "sha256": hash_key(KEY), "tokens_per_minute": TOKENS_PER_MINUTE}]},
        }))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(ROOT)}
        urls = []
        try:
            _wait(f"http://127.0.0.1:{replica_port}/health", replica)
            for _ in range(2):  # two processes: nothing in memory is shared between them
                port = free_port()
                log = open(folder / f"gateway-{port}.log", "wb")
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "llmops", "serve", "--config", str(config), "--port", str(port)],
                    cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT))
                urls.append(f"http://127.0.0.1:{port}")
            for url, process in zip(urls, processes[1:]):
                _wait(url + "/health", process)
            yield {"urls": urls, "redis": redis_url, "folder": folder, "config": config, "env": env}
        finally:
            for process in reversed(processes):
                _stop(process)


async def _one(client, stats: dict, url: str) -> None:
    try:
        answer = await client.chat.completions.create(model="tiny@production", messages=MESSAGES,
                                                      max_tokens=MAX_TOKENS)
    except openai.RateLimitError as error:
        assert error.response.headers["retry-after"].isdigit()
        stats[url]["refused"] += 1
    else:
        stats[url]["served"] += 1
        stats[url]["tokens"] += answer.usage.total_tokens


async def _burst(urls: list[str], waves: int, per_gateway: int) -> dict:
    clients = {url: openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60) for url in urls}
    stats = {url: {"served": 0, "refused": 0, "tokens": 0} for url in urls}
    for wave in range(waves):
        # Interleaved, and each wave led by the other gateway: requests reach the shared bucket in no
        # fixed order, so neither gateway is first to every free reservation.
        order = urls[wave % len(urls):] + urls[:wave % len(urls)]
        await asyncio.gather(*(_one(clients[url], stats, url) for _ in range(per_gateway) for url in order))
    for client in clients.values():
        await client.close()
    return stats


def test_two_gateways_keep_one_token_budget_per_key(two_gateways):
    started = time.monotonic()
    # 3 waves of 2 × 40 concurrent requests ask for 6,000 tokens, six times the minute's budget.
    stats = asyncio.run(_burst(two_gateways["urls"], waves=3, per_gateway=40))
    elapsed = time.monotonic() - started
    served = sum(s["tokens"] for s in stats.values())
    body = json.dumps({"model": "tiny@production", "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    one_reservation = MAX_TOKENS + len(body)  # n × max_tokens + a prompt estimate of at most one token per byte
    refilled = TOKENS_PER_MINUTE * elapsed / 60
    assert served <= TOKENS_PER_MINUTE + refilled + one_reservation, (stats, elapsed)
    # The budget was used, by both gateways, and both refused the rest.
    assert served >= 0.5 * TOKENS_PER_MINUTE, stats
    assert all(s["served"] > 0 and s["refused"] > 0 for s in stats.values()), stats


def test_a_gateway_pointed_at_no_redis_refuses_to_start_and_names_the_url(two_gateways, tmp_path):
    import yaml

    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = yaml.safe_load(two_gateways["config"].read_text())
    config["auth"]["rate_limit_store"] = dead
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "llmops", "serve", "--config", str(path), "--port", str(free_port())],
                            cwd=two_gateways["folder"], env=two_gateways["env"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and dead in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
