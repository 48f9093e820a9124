"""API keys, rate limits and traffic capture on the in-process gateway (transformers engine, tiny model),
driven by the official `openai` client: 401 / 403 / 429, captured token ids that match what the
client got, and no plain key anywhere (config, logs, traces, captured traffic)."""

from __future__ import annotations

import logging
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEYS = {"full": "sk-inproc-full-7f3a", "narrow": "sk-inproc-narrow-91bc", "slow": "sk-inproc-slow-44de"}
MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]


@pytest.fixture(scope="module")
def logs():
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler, root = _Collect(level=logging.DEBUG), logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture(scope="module")
def gateway(tiny_store, tmp_path_factory, logs):
    import torch
    import yaml

    from llmops.config import load_config
    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.server import BackgroundServer
    from llmops.gateway.auth import hash_key

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("keys")
    with tiny_store(folder):
        config_file = folder / "gateway.yaml"
        config_file.write_text(yaml.safe_dump({
            "kind": "gateway", "models": ["tiny@production", "tiny/1"],
            "tracing": {"flush_interval": 0.1, "experiment": "keys-test"},
            "limits": {"default_max_tokens": 8},
            "capture": {"enabled": True, "path": "traffic", "text": True, "flush_interval": 0.1},
            "auth": {"enabled": True, "metrics_require_key": True, "keys": [
                {"id": "team-full", "sha256": hash_key(KEYS["full"])},
                {"id": "team-narrow", "sha256": hash_key(KEYS["narrow"]), "models": ["tiny/*"]},
                {"id": "team-slow", "sha256": hash_key(KEYS["slow"]), "requests_per_minute": 60,
                 "tokens_per_minute": 10},
            ]},
        }))
        config = load_config(config_file, GatewayConfig)
        assert config.capture.path == folder / "traffic"  # relative to the config file
        app = create_app(config)
        server = BackgroundServer(app).start()
        yield {"url": server.url, "app": app, "folder": folder, "config": config_file}
        server.stop()


def _client(gateway, key="full"):
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=KEYS.get(key, key), max_retries=0)


def test_keys_scopes_and_rates(gateway):
    url = gateway["url"]
    bare = httpx.post(url + "/v1/chat/completions", json={"model": "tiny@production", "messages": MESSAGES})
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "sk-unknown").chat.completions.create(model="tiny@production", messages=MESSAGES)
    narrow = _client(gateway, "narrow")
    assert narrow.chat.completions.create(model="tiny/1", messages=MESSAGES, max_tokens=2).choices
    with pytest.raises(openai.PermissionDeniedError) as caught:
        narrow.chat.completions.create(model="tiny@production", messages=MESSAGES)
    assert caught.value.status_code == 403
    assert [m.id for m in narrow.models.list().data] == ["tiny/1"]  # a key lists what it may call
    slow = _client(gateway, "slow")  # 10 tokens per minute: one request spends them
    slow.chat.completions.create(model="tiny@production", messages=MESSAGES, max_tokens=8)
    with pytest.raises(openai.RateLimitError) as caught:
        slow.chat.completions.create(model="tiny@production", messages=MESSAGES, max_tokens=8)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 401
    metrics = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {KEYS['full']}"})
    assert metrics.status_code == 200 and 'status="401"' in metrics.text and 'status="429"' in metrics.text


def test_capture_has_a_record_per_request_with_the_right_token_ids(gateway):
    from llmops.gateway import capture

    client = _client(gateway)
    engine = next(iter(gateway["app"].backend.router.engines().values()))
    traffic = gateway["folder"] / "traffic"
    gateway["app"].capture.flush()
    before = {r["request_id"] for r in capture.read(root=traffic)}
    expected = {}
    for question in ("Peru", "Chile", "Japan"):
        messages = [{"role": "user", "content": f"What is the capital of {question}?"}]
        raw = client.chat.completions.with_raw_response.create(model="tiny@production", messages=messages,
                                                               max_tokens=6, temperature=0)
        expected[raw.headers["x-request-id"]] = (messages, [raw.parse().choices[0].message.content])
    raw = client.chat.completions.with_raw_response.create(model="tiny@production", messages=MESSAGES, max_tokens=5,
                                                           temperature=0.8, seed=1, n=2)
    expected[raw.headers["x-request-id"]] = (MESSAGES, [c.message.content for c in raw.parse().choices])
    raw = client.chat.completions.with_raw_response.create(model="tiny@production", messages=MESSAGES, max_tokens=6,
                                                           temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    expected[raw.headers["x-request-id"]] = (MESSAGES, [text])
    deadline = time.monotonic() + 10
    while True:
        records = {r["request_id"]: r for r in capture.read(model="tiny", root=traffic)
                   if r["request_id"] not in before}
        if len(records) >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(records) == set(expected)
    for request_id, (messages, texts) in expected.items():
        record = records[request_id]
        assert record["prompt_token_ids"] == engine.encode_chat(messages)
        assert [engine.decode(ids) for ids in record["completion_token_ids"]] == texts
        assert record["completion_text"] == texts and record["key_id"] == "team-full"
        assert record["model"] == "tiny@production" and record["model_version"] == "tiny/1"
        assert record["completion_tokens"] == sum(map(len, record["completion_token_ids"]))
        assert all(f in {"stop", "length"} for f in record["finish_reasons"]) and record["latency_ms"] > 0


def test_no_plain_key_in_config_logs_traces_or_traffic(gateway, logs):
    app_gateway = gateway["app"]
    app_gateway.capture.flush()
    time.sleep(0.5)  # one more trace flush
    files = [gateway["config"], gateway["folder"] / "mlflow.db", *(gateway["folder"] / "traffic").rglob("*.parquet")]
    blob = b"".join(p.read_bytes() for p in files)
    text = "\n".join(logs)
    for key in KEYS.values():
        assert key.encode() not in blob and key not in text
    assert b"team-full" in blob  # key ids are recorded (capture, trace tags)
