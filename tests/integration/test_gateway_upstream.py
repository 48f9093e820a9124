"""The upstream fleet backend end to end: replicas on 127.0.0.1 behind the llmops gateway, driven by the
official `openai` client.

Two kinds of replicas: the benchmark's fixed-latency OpenAI-compatible server (fast to start and to
kill, and it counts `/v1/load_lora_adapter` calls), and the llmops gateway itself with the
transformers engine (a real model server; the slow test at the end).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.services import eventually

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
FAKE_UPSTREAM = ROOT / "benchmarks" / "_fake_upstream.py"
KEYS = {"full": "sk-test-full-0001", "narrow": "sk-test-narrow-0002", "slow": "sk-test-slow-0003"}
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process is None or process.poll() is None, f"{url}: the server exited"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up in {timeout} s")


def _make_adapter(base_path: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


class _Replica:
    """A fake upstream in a subprocess that can be killed and restarted on its port."""

    def __init__(self, latency_ms: int = 30, chunks: int = 5):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(FAKE_UPSTREAM), str(self.port), str(latency_ms), str(chunks)]
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.args)
        _wait_http(self.url + "/health", process=self.process)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def loads(self) -> dict:
        return httpx.get(self.url + "/stats").json()["loads"]

    def received(self) -> int:
        """Generation requests this replica process has received."""
        return httpx.get(self.url + "/stats").json()["requests"]


def _serve_in_thread(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the proxy did not start"
        time.sleep(0.05)
    return server, thread


@pytest.fixture(scope="module")
def registry_folder(tiny_store, tiny_model_path, tmp_path_factory):
    """A store with tiny@production (base) and capitals@production (an adapter of it)."""
    from llmops import registry

    folder = tmp_path_factory.mktemp("upstream")
    with tiny_store(folder):
        registry.register_adapter("capitals", _make_adapter(tiny_model_path, folder / "adapter", 1), base="tiny/1",
                                  alias="production")
        yield folder


@pytest.fixture(scope="module")
def fleet(registry_folder, caplog_module):
    """Two fake replicas behind the gateway, with keys, a rate-limited key and traffic capture."""
    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.auth import hash_key

    replicas = [_Replica(), _Replica()]
    traffic = registry_folder / "traffic"
    config = GatewayConfig(
        refresh_interval=1.0, preload=False,
        engine={"kind": "upstream", "upstream": {
            "urls": [r.url for r in replicas], "health_interval": 0.3, "health_timeout": 0.5, "retries": 2,
            "retry_backoff": 0.01, "timeout": 10}},
        tracing={"flush_interval": 0.1, "experiment": "upstream"},
        capture={"enabled": True, "path": str(traffic), "flush_interval": 0.1},
        auth={"enabled": True, "keys": [
            {"id": "team-full", "sha256": hash_key(KEYS["full"])},
            {"id": "team-narrow", "sha256": hash_key(KEYS["narrow"]), "models": ["tiny@*"]},
            {"id": "team-slow", "sha256": hash_key(KEYS["slow"]), "requests_per_minute": 2},
        ]})
    app = create_app(config)
    port = _free_port()
    server, thread = _serve_in_thread(app, port)
    yield {"url": f"http://127.0.0.1:{port}", "replicas": replicas, "app": app, "traffic": traffic}
    server.should_exit = True
    thread.join(30)
    for replica in replicas:
        if replica.process.poll() is None:
            replica.process.terminate()
            replica.process.wait()


@pytest.fixture(scope="module")
def caplog_module():
    """Every log record of the module's gateway, to check that no plain key is ever logged."""
    import logging

    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = _Collect(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)
    root.setLevel(old_level)


def _client(fleet, key: str = "full", **kwargs):
    return openai.OpenAI(base_url=fleet["url"] + "/v1", api_key=KEYS.get(key, key), max_retries=0, **kwargs)


def _upstreams(fleet) -> dict:
    """Each replica's state as the gateway's `/health` reports it."""
    return httpx.get(fleet["url"] + "/health").json()["upstreams"]


def _served(fleet) -> dict:
    return {url: s["served"] for url, s in _upstreams(fleet).items()}


def test_requests_are_spread_over_both_replicas(fleet):
    client = _client(fleet)
    before = _served(fleet)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: client.chat.completions.with_raw_response.create(
            model="tiny@production", messages=MESSAGES, max_tokens=5), range(24)))
    assert all(r.headers["x-llmops-model-version"] == "tiny/1" for r in results)
    assert all(r.parse().choices[0].message.content for r in results)
    after = _served(fleet)
    added = [after[url] - before[url] for url in after]
    assert sum(added) == 24 and min(added) >= 4, added


def test_streams_pass_through_unchanged(fleet):
    client = _client(fleet)
    whole = client.chat.completions.create(model="capitals@production", messages=MESSAGES, max_tokens=5)
    chunks = list(client.chat.completions.create(model="capitals@production", messages=MESSAGES, max_tokens=5,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_a_stream_reaches_done_and_gives_its_replica_connection_back(fleet):
    """The replica's last piece carries the end of the response: the client reads every event up to
    `[DONE]`, the usage the gateway asked for stays out (the client did not), and the connection goes
    back to the pool as a served request, not closed as an abandoned one."""
    before = _served(fleet)
    payload = {"model": "capitals@production", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", fleet["url"] + "/v1/chat/completions", json=payload,
                      headers={"authorization": f"Bearer {KEYS['full']}"}, timeout=30) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_raw())
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and body.endswith(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events) and b'"usage"' not in body
    after = _served(fleet)
    assert sum(after.values()) - sum(before.values()) == 1


def _in_flight(fleet) -> int:
    return sum(s["in_flight"] for s in _upstreams(fleet).values())


def _stream(fleet, timeout: float, **fake):
    """A raw streamed chat request (`httpx.stream`); `fake` shapes the replica's stream (`fake_chunks`, ...)."""
    return httpx.stream("POST", fleet["url"] + "/v1/chat/completions", headers={"authorization": f"Bearer {KEYS['full']}"},
                        json={"model": "capitals@production", "messages": MESSAGES, "max_tokens": 5, "stream": True,
                              **fake}, timeout=timeout)


def test_a_slow_reader_holds_its_replica_back_and_gets_every_event_in_order(fleet):
    """A client that reads nothing while the replica streams 26 MB fills every buffer on the way: the
    gateway's writes to it wait (each piece goes out after the one before), the connection to the
    replica pauses, and the replica is held back. Once the client reads, every event arrives once, in
    order, up to `[DONE]`, and the replica's connection goes back to the pool."""
    count, text = 800, "x" * 32768
    before = _served(fleet)
    with _stream(fleet, 60, fake_chunks=count, fake_chunk_bytes=len(text), fake_latency_ms=100) as response:
        assert response.status_code == 200
        time.sleep(1.5)  # the replica would have sent everything in 0.1 s
        assert _in_flight(fleet) == 1
        body = b"".join(response.iter_raw())
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert len(chunks) == count and all(c["choices"][0]["delta"]["content"] == text for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "length"]
    eventually(lambda: _in_flight(fleet) == 0)
    assert sum(_served(fleet).values()) - sum(before.values()) == 1


def test_lines_longer_than_the_hold_back_limit_arrive_whole(fleet):
    """The gateway holds back at most 1 MiB of an unfinished line (a replica's bytes cannot pile up in
    it); a 3 MiB event still reaches the client whole, in order."""
    text = "x" * (3 << 20)
    with _stream(fleet, 60, fake_chunks=3, fake_chunk_bytes=len(text), fake_latency_ms=30) as response:
        body = b"".join(response.iter_raw())
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and len(events) == 4
    assert all(json.loads(e[len(b"data: "):])["choices"][0]["delta"]["content"] == text for e in events[:-1])


def test_a_replica_that_dies_while_its_reader_is_slow_ends_the_stream_with_an_error_event(fleet):
    """The replica dies while the client reads nothing: once the client reads, it gets what the replica
    had sent, then the gateway's in-band 502 error and `[DONE]` (not a hang until the request timeout),
    and the replica is out of rotation until it is healthy again."""
    with _stream(fleet, 60, fake_chunks=800, fake_chunk_bytes=32768, fake_latency_ms=100) as response:
        time.sleep(1.0)
        upstreams = _upstreams(fleet)
        victim = next(r for r in fleet["replicas"] if upstreams[r.url]["in_flight"] == 1)
        victim.kill()
        started = time.monotonic()
        body = b"".join(response.iter_raw())
    try:
        assert time.monotonic() - started < 5
        events = [e for e in body.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]" and len(events) < 800
        error = json.loads(events[-2][len(b"data: "):])["error"]
        assert error["code"] == "upstream_error" and "broke off" in error["message"]
    finally:
        victim.start()
        eventually(lambda: _upstreams(fleet)[victim.url]["healthy"])


def test_a_client_that_leaves_mid_stream_closes_the_replica_connection(fleet):
    """The client reads one event of a 5 s stream and hangs up: the gateway ends the request as 499
    (client closed the request) and closes its replica connection, which makes a vLLM replica abort
    the generation, instead of reading the stream to its end."""
    def closed() -> float:
        text = httpx.get(fleet["url"] + "/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("llmops:requests_total{") and 'status="499"' in line)

    before = closed()
    with _stream(fleet, 30, fake_chunks=50, fake_latency_ms=5000) as response:
        pieces = response.iter_raw()  # kept: an abandoned iterator closes the connection
        assert next(pieces).startswith(b"data: ")
        assert _in_flight(fleet) == 1
    started = time.monotonic()
    eventually(lambda: _in_flight(fleet) == 0 and closed() == before + 1)
    assert time.monotonic() - started < 3


def test_adapter_is_loaded_once_per_version_on_each_replica(fleet):
    client = _client(fleet)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.completions.create(model="capitals@production", prompt="Hi", max_tokens=3),
                      range(16)))
    for replica in fleet["replicas"]:
        assert replica.loads() == {"capitals/1": 1}


def test_no_key_401_outside_scope_403_over_rate_429(fleet):
    bare = httpx.post(fleet["url"] + "/v1/chat/completions", json={"model": "tiny@production", "messages": MESSAGES})
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "authentication_error" and bare.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(fleet, "sk-not-a-key").chat.completions.create(model="tiny@production", messages=MESSAGES)
    narrow = _client(fleet, "narrow")
    assert narrow.chat.completions.create(model="tiny@production", messages=MESSAGES).choices
    with pytest.raises(openai.PermissionDeniedError) as caught:
        narrow.chat.completions.create(model="capitals@production", messages=MESSAGES)
    assert caught.value.status_code == 403 and caught.value.body["code"] == "model_not_allowed"
    slow = _client(fleet, "slow")
    for _ in range(2):
        slow.chat.completions.create(model="tiny@production", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        slow.chat.completions.create(model="tiny@production", messages=MESSAGES)
    assert caught.value.status_code == 429 and int(caught.value.response.headers["retry-after"]) >= 1
    assert httpx.get(fleet["url"] + "/health").status_code == 200  # open without a key
    listed = {m.id: m.root for m in _client(fleet).models.list().data}
    assert listed["capitals@production"] == "capitals/1" and listed["tiny@production"] == "tiny/1"
    assert httpx.get(fleet["url"] + "/v1/models").status_code == 401


def test_a_killed_replica_fails_only_its_requests_in_flight_and_health_checks_bring_it_back(fleet):
    client = _client(fleet)
    victim, survivor = fleet["replicas"]
    done, failed = [], []

    def call(i: int) -> str:
        try:
            result = client.chat.completions.create(model="capitals@production", messages=MESSAGES, max_tokens=5)
        except openai.APIStatusError as error:  # in flight on the victim: never replayed elsewhere
            assert error.status_code == 502 and error.body["code"] == "upstream_error"
            failed.append(i)
            return ""
        done.append(i)
        return result.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(60)]
        while len(done) < 12:
            time.sleep(0.005)
        victim.kill()  # mid-burst, with requests in flight on it
        answers = [f.result() for f in futures]
    assert len(failed) <= 8 and len(done) == 60 - len(failed)  # at most the requests in flight then
    assert all(answers[i] for i in done)
    health = lambda: httpx.get(fleet["url"] + "/health").json()["upstreams"]  # noqa: E731
    assert health()[victim.url]["healthy"] is False
    assert all(call(i) for i in range(8))  # refused connections are retried on the survivor
    victim.start()
    deadline = time.monotonic() + 10
    while not health()[victim.url]["healthy"]:
        assert time.monotonic() < deadline, "the restarted replica was not taken back"
        time.sleep(0.1)
    before = health()[victim.url]["served"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(call, range(16)))
    assert health()[victim.url]["served"] > before  # back in rotation
    assert victim.loads() == {"capitals/1": 1}  # the restarted replica had lost it: loaded again, once


def test_a_request_that_crashes_its_replica_is_not_replayed_on_another(fleet):
    """A generation is retried elsewhere only when no byte of it reached the first replica."""
    before = {r.url: r.received() for r in fleet["replicas"]}
    response = httpx.post(fleet["url"] + "/v1/chat/completions", headers={"authorization": f"Bearer {KEYS['full']}"},
                          json={"model": "tiny@production", "messages": MESSAGES, "fake_crash": True}, timeout=30)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
    deadline = time.monotonic() + 10  # the replica's sockets close as it exits: reap it
    while not (crashed := [r for r in fleet["replicas"] if r.process.poll() is not None]):
        assert time.monotonic() < deadline, "no replica crashed"
        time.sleep(0.05)
    assert len(crashed) == 1
    survivor = next(r for r in fleet["replicas"] if r.process.poll() is None)
    assert survivor.received() == before[survivor.url]  # it never saw the request
    crashed[0].start()
    deadline = time.monotonic() + 10
    while not all(s["healthy"] for s in httpx.get(fleet["url"] + "/health").json()["upstreams"].values()):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_capture_records_every_request_with_token_ids_and_no_plain_keys(fleet, caplog_module):
    from llmops.gateway import capture

    client = _client(fleet)
    fleet["app"].capture.flush()
    before = len(capture.read(root=fleet["traffic"]))
    ids = []
    for i in range(5):
        raw = client.chat.completions.with_raw_response.create(model="capitals@production", messages=MESSAGES,
                                                               max_tokens=5)
        ids.append(raw.headers["x-request-id"])
    list(client.chat.completions.create(model="capitals@production", messages=MESSAGES, max_tokens=5, stream=True))
    deadline = time.monotonic() + 10
    while len(capture.read(root=fleet["traffic"])) < before + 6:
        assert time.monotonic() < deadline, "capture did not catch up"
        time.sleep(0.1)
    records = {r["request_id"]: r for r in capture.read(model="capitals", root=fleet["traffic"])}
    for request_id in ids:
        record = records[request_id]
        assert record["key_id"] == "team-full" and record["model_version"] == "capitals/1"
        assert record["model"] == "capitals@production" and record["finish_reasons"] == ["length"]
        assert record["prompt_token_ids"] == [1, 2, 3, 4, 5]
        assert record["completion_token_ids"] == [[100, 101, 102, 103, 104]]
        assert record["prompt_text"] is None and record["latency_ms"] > 0
    streamed = capture.read(root=fleet["traffic"])[-1]
    assert streamed["completion_token_ids"] == [[100, 101, 102, 103, 104]] and streamed["ttft_ms"] is not None
    # Plain keys appear nowhere: not in captured traffic, traces or logs (hashes and ids only).
    fleet["app"].tracer.flush()
    traces = (fleet["traffic"].parent / "mlflow.db").read_bytes()
    assert b"team-full" in traces and b"capitals/1" in traces  # traces carry the key id and the version
    blobs = traces + b"".join(p.read_bytes() for p in fleet["traffic"].rglob("*.parquet"))
    logs = "\n".join(caplog_module)
    for key in KEYS.values():
        assert key.encode() not in blobs and key not in logs
    assert b"team-full" in blobs or records  # key ids are recorded


@pytest.mark.slow
def test_llmops_gateways_as_replicas(registry_folder, tmp_path):
    """The llmops gateway (transformers engine) is itself an OpenAI-compatible upstream: two of them
    behind the proxy share the load, and killing one mid-burst loses no request."""
    from llmops.gateway import GatewayConfig, create_app

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = tmp_path / "replica.yaml"
    config.write_text("preload: false\nengine: {num_threads: 1, max_batch_size: 8}\ntracing: {enabled: false}\n")
    ports = [_free_port(), _free_port()]
    processes = [subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config), "--port",
                                   str(port)], env=env, cwd=registry_folder) for port in ports]
    try:
        for port, process in zip(ports, processes):
            _wait_http(f"http://127.0.0.1:{port}/health", timeout=120, process=process)
        app = create_app(GatewayConfig(models=["capitals@production"], tracing={"enabled": False}, engine={
            "kind": "upstream", "upstream": {"urls": [f"http://127.0.0.1:{p}" for p in ports], "health_interval": 0.5,
                                             "retries": 2, "retry_backoff": 0.01, "timeout": 60}}))
        port = _free_port()
        server, thread = _serve_in_thread(app, port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        ask = lambda _: client.chat.completions.create(  # noqa: E731
            model="capitals@production", messages=MESSAGES, max_tokens=4, temperature=0).choices[0].message.content
        first = [ask(i) for i in range(4)]  # warm both (each loads the model and adapter on first use)
        assert len(set(first)) == 1  # the same greedy answer from either replica
        served = {url: s["served"] for url, s in app.backend.pool.stats().items()}
        assert all(count >= 1 for count in served.values()), served
        def ask_or_502(i):
            try:
                return ask(i)
            except openai.APIStatusError as error:  # in flight on the killed replica: not replayed
                assert error.status_code == 502
                return None

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(ask_or_502, i) for i in range(16)]
            time.sleep(0.3)
            processes[0].send_signal(signal.SIGKILL)
            answers = [f.result() for f in futures]
        assert sum(a is None for a in answers) <= 4 and {a for a in answers if a is not None} == {first[0]}
        dead = f"http://127.0.0.1:{ports[0]}"
        deadline = time.monotonic() + 10  # health checks every 0.5 s take the dead replica out
        while app.backend.pool.stats()[dead]["healthy"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not app.backend.pool.stats()[dead]["healthy"], app.backend.pool.stats()
        assert [ask(i) for i in range(4)] == [first[0]] * 4  # the survivor serves everything now
        server.should_exit = True
        thread.join(30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(30)


def _start_proxy(registry_folder, upstream: str, traffic: Path, flush_interval: float):
    """`llmops serve` with `engine.kind: upstream` in a subprocess."""
    import yaml

    port = _free_port()
    config = traffic.parent / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "gateway", "port": port, "models": ["tiny@production"], "shutdown_timeout": 10,
        "engine": {"kind": "upstream", "upstream": {"urls": [upstream], "health_interval": 0.5}},
        "capture": {"enabled": True, "path": traffic.name, "flush_interval": flush_interval},
    }))
    process = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config)], cwd=registry_folder)
    _wait_http(f"http://127.0.0.1:{port}/health", process=process)
    return port, process


def test_sigterm_lets_streams_finish_and_flushes_capture(registry_folder, tmp_path):
    from llmops.gateway import capture

    upstream = _Replica(latency_ms=1500, chunks=15)  # a stream of 1.5 s
    traffic = tmp_path / "traffic"
    port, process = _start_proxy(registry_folder, upstream.url, traffic, flush_interval=60)  # no timed flush
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(model="tiny@production", messages=MESSAGES, stream=True)
        first = next(iter(stream))
        process.send_signal(signal.SIGTERM)  # mid-stream
        rest = list(stream)
        assert len([c for c in [first, *rest] if c.choices]) == 15  # the stream finished
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health")
        (record,) = capture.read(root=traffic)  # written at shutdown, not by the (60 s) timer
        assert record["completion_token_ids"] == [list(range(100, 115))]
    finally:
        if process.poll() is None:
            process.kill()
        upstream.process.terminate()


def test_sigkill_leaves_only_readable_parquet_files(registry_folder, tmp_path):
    import pyarrow.parquet as pq

    from llmops.gateway import capture

    upstream = _Replica(latency_ms=1, chunks=3)
    traffic = tmp_path / "traffic"
    port, process = _start_proxy(registry_folder, upstream.url, traffic, flush_interval=0.02)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.completions.create, model="tiny@production", prompt="Hi")
                       for _ in range(200)]
            while sum(f.done() for f in futures) < 100:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)  # while requests and batch writes are under way
            done = sum(1 for f in futures if f.exception() is None)
        files = list(traffic.rglob("*"))
        parquet = [p for p in files if p.is_file() and p.name.endswith(".parquet")]
        assert parquet and all(pq.read_table(p).num_rows > 0 for p in parquet)
        assert {p.suffix for p in files if p.is_file()} <= {".parquet", ".tmp"}  # a .tmp is never read
        records = capture.read(root=traffic)
        assert 0 < len(records) <= done and all(r["completion_token_ids"] == [[100, 101, 102]] for r in records)
    finally:
        if process.poll() is None:
            process.kill()
        upstream.process.terminate()


def test_evaluation_drives_a_fleet_config_in_process(registry_folder, tmp_path):
    """`llmops eval run --gateway-config serving/gateway.vllm.yaml`: the evaluator enters the app's public
    lifespan and sends its requests through the same pipeline, in front of the fleet."""
    import asyncio

    import yaml

    from llmops.evaluation.generators import in_process_generator

    replica = _Replica(latency_ms=1, chunks=3)
    shipped = yaml.safe_load((ROOT / "serving" / "gateway.vllm.yaml").read_text())
    shipped["engine"]["upstream"]["urls"] = [replica.url]
    shipped.update(models=["tiny@production"], tracing={"enabled": False}, capture={"enabled": False})
    config = tmp_path / "gateway.vllm.yaml"
    config.write_text(yaml.safe_dump(shipped))

    async def ask():
        generator = await in_process_generator(str(config))
        try:
            return await generator.chat("tiny@production", MESSAGES, {"max_tokens": 3})
        finally:
            await generator.aclose()

    cwd = os.getcwd()
    os.chdir(registry_folder)
    try:
        answer = asyncio.run(ask())
    finally:
        os.chdir(cwd)
        replica.process.terminate()
    assert answer.text == " tok0 tok1 tok2" and answer.model_version == "tiny/1" and answer.output_tokens == 3
