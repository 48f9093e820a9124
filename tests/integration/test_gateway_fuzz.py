"""Hostile input against a live gateway: hypothesis mutates valid requests (wrong types, extreme values,
garbage bytes, deep nesting, lone surrogates, in every field) and sends them over HTTP.

Each must be answered (no dropped connection) below 500, every 4xx in OpenAI's error shape, no stream
may carry an internal error, traffic capture must not fail on what was accepted, and a normal request
is still answered at the end. The volume (1,000 mutations per endpoint) runs on the fleet backend in
front of a fake vLLM replica; a smaller run covers the in-process engine with the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEY = "sk-fuzz-0001"
BASES = {
    "/v1/chat/completions": {"model": "tiny@production", "messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 4, "temperature": 0.5, "n": 1, "stop": ["\n"], "seed": 1,
                             "stream": False, "top_p": 0.9, "logprobs": False},
    "/v1/completions": {"model": "tiny@production", "prompt": "Hello", "max_tokens": 4, "echo": False, "n": 1,
                        "logprobs": None, "stream": False, "top_k": 5, "repetition_penalty": 1.1},
    "/v1/embeddings": {"model": "tiny@production", "input": ["one", "two"], "encoding_format": "float"},
}
SENT: dict[str, dict[str, int]] = {}

_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=12)
_scalar = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | _text
           | st.sampled_from([0, -1, 1e-300, 2**63, 2**64, 1e308, "true", "", "tiny@production", "qa@production"]))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_text, inner, max_size=4), max_leaves=12)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def mutated_body(draw, path: str) -> bytes:
    """A base request with 1-3 fields replaced, removed or added, or garbage at the byte level."""
    body = json.loads(json.dumps(BASES[path]))
    kind = draw(st.sampled_from(["fields", "fields", "fields", "bytes", "nesting", "stream"]))
    if kind == "stream" and path != "/v1/embeddings":
        body["stream"] = True
        body["stream_options"] = draw(st.sampled_from([None, {"include_usage": True}, {"include_usage": "x"}]))
        kind = "fields"
    names = sorted(body) + ["variables", "prompt", "stream_options", "n", "best_of", "dimensions", "unknown_field"]
    for _ in range(draw(st.integers(1, 3)) if kind == "fields" else 0):
        name = draw(st.sampled_from(names))
        if draw(st.integers(0, 5)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(_json)
    text = json.dumps(body, ensure_ascii=True)  # lone surrogates become \udXXX escapes
    if kind == "nesting":
        name = draw(st.sampled_from(names))
        text = text[:-1] + f', "{name}": {_deep(draw(st.sampled_from([65, 300, 2000, 100_000])))}}}'
    raw = text.encode()
    if kind == "bytes":
        garbage = draw(st.binary(min_size=1, max_size=16))
        at = draw(st.integers(0, len(raw)))
        raw = draw(st.sampled_from([raw[:at], raw[:at] + garbage + raw[at:], garbage, b"\xff\xfe" + raw]))
    return raw


def _check(client: "httpx.Client", path: str, raw: bytes) -> None:
    """Send one request; assert it is answered below 500, errors in OpenAI's shape, streams clean."""
    counts = SENT.setdefault(path, {})
    try:
        with client.stream("POST", path, content=raw, headers={"content-type": "application/json"}) as response:
            data = response.read()
    except httpx.HTTPError as error:  # a dropped connection or a hang
        pytest.fail(f"{path}: no answer to {raw[:200]!r}: {error!r}")
    status = response.status_code
    counts[status // 100] = counts.get(status // 100, 0) + 1
    assert status < 500, f"{path}: {status} for {raw[:300]!r}: {data[:300]!r}"
    if status >= 400:
        error = json.loads(data)["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), data
        assert error["code"] is None or isinstance(error["code"], str)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        assert data.rstrip().endswith(b"data: [DONE]"), data[-200:]
        assert b"internal_error" not in data and b"internal_server_error" not in data, data[-300:]
    else:
        json.loads(data)


def _serve(folder, engine: dict, limits: dict, traffic: Path):
    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.auth import hash_key
    from llmops.gateway.server import BackgroundServer

    config = GatewayConfig(preload=False, engine=engine, limits=limits, tracing={"enabled": False},
                           capture={"enabled": True, "path": str(traffic), "flush_interval": 0.2},
                           auth={"enabled": True, "keys": [{"id": "fuzz", "sha256": hash_key(KEY)}]})
    app = create_app(config)
    return app, BackgroundServer(app).start()


@pytest.fixture(scope="module")
def registry_folder(tiny_store, tmp_path_factory):
    from llmops import registry

    folder = tmp_path_factory.mktemp("fuzz")
    with tiny_store(folder):
        registry.register_prompt("qa", "Question: {{ q }}", alias="production")
        yield folder


@pytest.fixture(scope="module")
def fleet(registry_folder):
    from tests.services import fake_replica

    with fake_replica(latency_ms=1, chunks=3) as url:
        engine = {"kind": "upstream", "upstream": {"urls": [url], "retries": 0}}
        app, server = _serve(registry_folder, engine, {"max_body_bytes": 262_144}, registry_folder / "traffic-fleet")
        client = httpx.Client(base_url=server.url, timeout=60, headers={"authorization": f"Bearer {KEY}"})
        yield {"app": app, "client": client}
        client.close()
        server.stop()


@pytest.fixture(scope="module")
def inprocess(registry_folder):
    import torch

    torch.set_num_threads(1)
    limits = {"max_tokens": 8, "default_max_tokens": 4, "max_sequences": 4, "max_n": 4, "max_body_bytes": 262_144}
    app, server = _serve(registry_folder, {"num_threads": 1, "max_batch_size": 8}, limits,
                         registry_folder / "traffic-inprocess")
    client = httpx.Client(base_url=server.url, timeout=120, headers={"authorization": f"Bearer {KEY}"})
    yield {"app": app, "client": client}
    client.close()
    server.stop()


_FUZZ = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
_SMALL = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("path", sorted(BASES))
def test_fleet_answers_every_mutation_below_500(fleet, path):
    SENT.pop(path, None)

    @_FUZZ
    @given(raw=mutated_body(path))
    def run(raw: bytes) -> None:
        _check(fleet["client"], path, raw)

    run()
    counts = SENT[path]
    assert sum(counts.values()) >= 1000 and counts.get(2) and counts.get(4), counts


@pytest.mark.parametrize("path", sorted(BASES))
def test_inprocess_answers_every_mutation_below_500(inprocess, path):
    @_SMALL
    @given(raw=mutated_body(path))
    def run(raw: bytes) -> None:
        _check(inprocess["client"], path, raw)

    run()


@pytest.mark.parametrize("backend", ["fleet", "inprocess"])
def test_still_serving_and_capture_never_failed(request, backend):
    gateway = request.getfixturevalue(backend)
    reply = gateway["client"].post("/v1/chat/completions", json=BASES["/v1/chat/completions"])
    assert reply.status_code == 200 and reply.json()["choices"]
    capture = gateway["app"].capture
    capture.flush()
    assert capture.stats.failed == 0 and capture.stats.written > 0
