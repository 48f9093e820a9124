"""One contract battery over both gateway backends: what a client sees must not depend on the backend.

`inprocess`: the transformers engine with the tiny model. `fleet`: `engine.kind: upstream` in front of
a replica speaking vLLM's OpenAI protocol (`benchmarks/_fake_upstream.py`; a real vLLM needs a GPU).
Both serve the same registry (tiny@production, other@production, prompts qa@production and
secret@production) with the same keys and limits, and every test runs against each.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
from pathlib import Path

import pytest

from tests.services import eventually

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"full": "sk-contract-full", "narrow": "sk-contract-narrow", "tight": "sk-contract-tight"}
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
LIMITS = {"max_n": 4, "max_tokens": 64, "default_max_tokens": 8, "max_prompts": 4, "max_sequences": 8,
          "max_stop": 2, "max_stop_length": 8, "max_embedding_inputs": 4, "max_body_bytes": 65536}


@pytest.fixture(scope="module")
def registry_folder(tiny_store, tiny_model_path, tmp_path_factory):
    from llmops import registry

    folder = tmp_path_factory.mktemp("contract")
    with tiny_store(folder):
        registry.register_base_model("other", tiny_model_path)
        registry.set_model_alias("other", "production", 1)
        registry.register_prompt("qa", "Question: {{ q }}\nAnswer:", alias="production")
        registry.register_prompt("secret", "Internal: {{ q }}", alias="production")
        yield folder


@pytest.fixture(scope="module", params=["inprocess", "fleet"])
def gw(request, registry_folder):
    """A running gateway on one backend; the same config otherwise."""
    import torch

    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.auth import hash_key
    from llmops.gateway.server import BackgroundServer
    from tests.services import fake_replica

    torch.set_num_threads(1)
    stack = contextlib.ExitStack()
    engine: dict = {"num_threads": 1, "max_batch_size": 8}
    if request.param == "fleet":
        url = stack.enter_context(fake_replica(latency_ms=30, chunks=5))
        engine = {"kind": "upstream", "upstream": {"urls": [url], "retries": 0}}
    traffic = registry_folder / f"traffic-{request.param}"
    config = GatewayConfig(
        preload=False, engine=engine, limits=LIMITS,
        tracing={"flush_interval": 0.1, "experiment": f"contract-{request.param}"},
        capture={"enabled": True, "path": str(traffic), "flush_interval": 0.1},
        auth={"enabled": True, "keys": [
            {"id": "full", "sha256": hash_key(KEYS["full"]), "prompts": ["qa*", "nope*"]},
            {"id": "narrow", "sha256": hash_key(KEYS["narrow"]), "models": ["tiny*"], "prompts": []},
            {"id": "tight", "sha256": hash_key(KEYS["tight"]), "tokens_per_minute": 150},
        ]})
    app = create_app(config)
    with stack, BackgroundServer(app) as server:
        yield {"url": server.url, "app": app, "traffic": traffic, "backend": request.param}


def _client(gw, key: str = "full") -> "openai.OpenAI":
    return openai.OpenAI(base_url=gw["url"] + "/v1", api_key=KEYS.get(key, key), max_retries=0)


def _post(gw, path: str, body, key: str = "full", headers: dict | None = None) -> "httpx.Response":
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(gw["url"] + path, content=content, timeout=60,
                      headers={"authorization": f"Bearer {KEYS.get(key, key)}", "content-type": "application/json",
                               **(headers or {})})


def _assert_openai_error(response: "httpx.Response", status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    if param is not None:
        assert error["param"] == param, error
    return error


# ------------------------------------------------------------------------------------ requests


def test_chat_answers_and_ids(gw):
    raw = _client(gw).chat.completions.with_raw_response.create(
        model="tiny@production", messages=MESSAGES, max_tokens=5, temperature=0,
        extra_headers={"x-request-id": "client-chosen-id"})
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.choices[0].message.content is not None
    assert reply.usage.completion_tokens <= 5 and reply.usage.total_tokens > reply.usage.completion_tokens
    assert raw.headers["x-request-id"] == "client-chosen-id"  # echoed back ...
    assert raw.headers["x-llmops-request-id"] not in ("", "client-chosen-id")  # ... never the gateway's key
    assert raw.headers["x-llmops-model-version"] == "tiny/1"


def test_streams_end_with_done_and_usage_only_when_asked(gw):
    client = _client(gw)
    chunks = list(client.chat.completions.create(model="tiny@production", messages=MESSAGES, max_tokens=5,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    plain = list(client.chat.completions.create(model="tiny@production", messages=MESSAGES, max_tokens=5,
                                                temperature=0, stream=True))
    assert all(c.choices and c.usage is None for c in plain)
    with httpx.stream("POST", gw["url"] + "/v1/completions", timeout=60, headers={
            "authorization": f"Bearer {KEYS['full']}"}, json={"model": "tiny@production", "prompt": "Hi",
                                                              "max_tokens": 3, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200 and lines[-1] == "data: [DONE]"


def test_completions_with_several_prompts_and_embeddings(gw):
    client = _client(gw)
    reply = client.completions.create(model="tiny@production", prompt=["Hello", "Bonjour"], max_tokens=3)
    assert len(reply.choices) >= 1 and reply.usage.completion_tokens >= 1
    embedded = client.embeddings.create(model="tiny@production", input=["one", "two"])
    assert len(embedded.data) == 2 and embedded.usage.prompt_tokens > 0


def test_registry_prompt_is_rendered_and_versioned(gw):
    raw = _client(gw).completions.with_raw_response.create(
        model="tiny@production", prompt="qa@production", max_tokens=3, extra_body={"variables": {"q": "Why?"}})
    assert raw.headers["x-llmops-prompt-version"] == "qa/1" and raw.parse().choices
    error = _assert_openai_error(_post(gw, "/v1/completions", {
        "model": "tiny@production", "prompt": "qa@production", "variables": {"wrong": 1}}), 400, "variables")
    assert "missing variable(s) q" in error["message"]


# -------------------------------------------------------------------------------------- errors

BAD_BODIES = [
    (b"{not json", 400, None),
    (b"[" * 60_000, 400, None),  # deep nesting
    (b'{"model": "tiny@production", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
    (b'{"model": "tiny@production", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    (b'{"model": "tiny@production", "x": ' + b"[" * 100 + b"]" * 100 + b", \"messages\": []}", 400, None),
    (b'[1, 2]', 400, None),
    (b'{"model": "tiny@production"}', 400, "messages"),
    (b'{"messages": []}', 400, "model"),
    (b'{"model": 5, "messages": []}', 400, "model"),
    (b'{"model": "tiny@production", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
    (b'{"model": "tiny@production", "messages": [], "stream": "true"}', 400, "stream"),
    (b'{"model": "tiny@production", "messages": [], "max_tokens": 1e400}', 400, None),
    (b'{"model": "tiny@production", "messages": [], "max_tokens": 123456789012345678901234567890}', 400, "max_tokens"),
    (b'{"model": "tiny@production", "messages": [], "seed": 18446744073709551616}', 400, "seed"),
    (b'{"model": "tiny@production", "messages": [], "seed": 9223372036854775808}', 400, "seed"),
    (b'{"model": "tiny@production", "messages": [], "temperature": -1}', 400, "temperature"),
    (b'{"model": "tiny@production", "messages": [], "top_p": 0}', 400, "top_p"),
    (b'{"model": "tiny@production", "messages": [], "repetition_penalty": 0}', 400, "repetition_penalty"),
    (b'{"model": "tiny@production", "messages": [], "top_k": -2}', 400, "top_k"),
    (b'{"model": "tiny@production", "messages": [], "stop": [""]}', 400, "stop"),
    (b'{"model": "nope@production", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    (b'{"model": "bad ref!", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "tiny@production", "messages": [], "prompt": "nope@production"}', 404, "prompt"),
    (b'{"model": "tiny@production", "prompt": "x' + b"y" * 70_000 + b'"}', 413, None),
]


@pytest.mark.parametrize("body, status, param", BAD_BODIES)
def test_malformed_input_is_a_4xx_in_openai_shape(gw, body, status, param):
    path = "/v1/completions" if b'"prompt": "x' in body else "/v1/chat/completions"
    _assert_openai_error(_post(gw, path, body), status, param)


def test_embeddings_refuse_lone_surrogates_and_bad_ids(gw):
    _assert_openai_error(_post(gw, "/v1/embeddings", b'{"model": "tiny@production", "input": "\\ud800"}'), 400)
    _assert_openai_error(_post(gw, "/v1/embeddings", {"model": "tiny@production", "input": []}), 400, "input")
    _assert_openai_error(_post(gw, "/v1/embeddings", {"model": "tiny@production", "input": [""]}), 400, "input")


def test_wrong_method_and_path(gw):
    _assert_openai_error(httpx.get(gw["url"] + "/v1/chat/completions"), 405)
    _assert_openai_error(httpx.get(gw["url"] + "/v1/nothing"), 404)


# -------------------------------------------------------------------------------------- limits

LIMITED = [
    ("/v1/chat/completions", {"messages": MESSAGES, "n": 5}, "n"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 65}, "max_tokens"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 65}, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": MESSAGES, "stop": ["a", "b", "c"]}, "stop"),
    ("/v1/chat/completions", {"messages": MESSAGES, "stop": "123456789"}, "stop"),
    ("/v1/completions", {"prompt": ["a", "b", "c", "d", "e"]}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 3}, "n"),  # 9 sequences > 8
    ("/v1/completions", {"prompt": [[1, 2]] * 5}, "prompt"),
    ("/v1/embeddings", {"input": ["a", "b", "c", "d", "e"]}, "input"),
]


@pytest.mark.parametrize("path, body, param", LIMITED)
def test_limits_are_400_naming_the_field(gw, path, body, param):
    error = _assert_openai_error(_post(gw, path, {"model": "tiny@production", **body}), 400, param)
    assert error["code"] == "limit_exceeded" and "limit" in error["message"]


def test_rate_limit_reserves_tokens_at_admission(gw):
    """150 tokens per minute: concurrent requests asking for 64 tokens each cannot all pass."""
    # A slow answer keeps the fleet's requests in flight (the in-process engine ignores the field).
    body = {"model": "tiny@production", "messages": MESSAGES, "max_tokens": 64, "fake_latency_ms": 3000}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: _post(gw, "/v1/chat/completions", body, key="tight"), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) in (1, 2, 3) and set(statuses) <= {200, 429}, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["type"] == "rate_limit_error"


# --------------------------------------------------------------------------------------- scope


def test_scope_covers_models_listing_prompts_and_embeddings(gw):
    narrow = _client(gw, "narrow")
    assert {m.id for m in narrow.models.list().data} <= {"tiny", "tiny@production"}
    assert "other@production" in {m.id for m in _client(gw).models.list().data}
    for path, body in (("/v1/chat/completions", {"messages": MESSAGES}), ("/v1/embeddings", {"input": "hi"})):
        error = _assert_openai_error(_post(gw, path, {"model": "other@production", **body}, key="narrow"), 403,
                                     "model")
        assert error["code"] == "model_not_allowed"
    for key, prompt in (("narrow", "qa@production"), ("full", "secret@production")):
        error = _assert_openai_error(_post(gw, "/v1/chat/completions", {
            "model": "tiny@production", "prompt": prompt, "variables": {"q": "x"}}, key=key), 403, "prompt")
        assert error["code"] == "prompt_not_allowed"


def test_keys_are_required_and_strangers_are_not_traced(gw):
    tracer = gw["app"].tracer
    submitted = tracer.stats.submitted
    _assert_openai_error(httpx.post(gw["url"] + "/v1/chat/completions", json={"model": "tiny@production"}), 401)
    _assert_openai_error(_post(gw, "/v1/chat/completions", {"model": "tiny@production"}, key="sk-unknown"), 401)
    _assert_openai_error(httpx.get(gw["url"] + "/v1/models"), 401)
    assert tracer.stats.submitted == submitted
    _post(gw, "/v1/chat/completions", {"model": "tiny@production", "messages": MESSAGES, "max_tokens": 2})
    eventually(lambda: tracer.stats.submitted == submitted + 1)  # traced once the answer is out
    assert httpx.get(gw["url"] + "/health").status_code == 200


# ------------------------------------------------------------------------------------- metrics


def test_metric_names_are_the_dashboards(gw):
    _client(gw).chat.completions.create(model="tiny@production", messages=MESSAGES, max_tokens=5, stream=True,
                                        temperature=0)
    for _ in _client(gw).chat.completions.create(model="tiny@production", messages=MESSAGES, max_tokens=5,
                                                 stream=True, temperature=0):
        pass
    text = httpx.get(gw["url"] + "/metrics").text
    dashboard = (ROOT / "serving" / "grafana-dashboard.json").read_text()
    import re

    names = set(re.findall(r"llmops:[a-z_]+", dashboard)) - {"llmops:e"}
    assert names, "the dashboard names no llmops metric"
    for name in sorted(names):
        assert f"\n{name}" in text or text.startswith(name), f"{name} is not exported"
    for family in ("time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
                   "request_success_total", "e2e_request_latency_seconds_count"):
        line = next(line for line in text.splitlines() if line.startswith(f"llmops:{family}{{")
                    and 'model="tiny"' in line)
        assert float(line.rsplit(" ", 1)[1]) > 0, line
    assert 'llmops:num_requests_running{model="tiny",version="1"} 0.0' in text


# ------------------------------------------------------------------------------------- capture


def test_capture_record_has_ids_versions_and_prompt_version(gw):
    from llmops.gateway import capture

    raw = _client(gw).chat.completions.with_raw_response.create(
        model="tiny@production", messages=[], max_tokens=4, temperature=0,
        extra_body={"prompt": "qa@production", "variables": {"q": "Capital of Peru?"}},
        extra_headers={"x-request-id": "client-capture"})
    request_id = raw.headers["x-llmops-request-id"]

    def recorded() -> dict:
        gw["app"].capture.flush()
        return {r["request_id"]: r for r in capture.read(root=gw["traffic"])}

    eventually(lambda: request_id in recorded())
    records = recorded()
    record = records[request_id]
    assert "client-capture" not in records
    assert record["key_id"] == "full" and record["model"] == "tiny@production"
    assert record["model_version"] == "tiny/1" and record["endpoint"] == "chat.completions"
    assert record["prompt_ref"] == "qa@production" and record["prompt_version"] == "qa/1"
    assert record["status"] == 200 and record["completion_tokens"] == raw.parse().usage.completion_tokens
    assert record["finish_reasons"] and record["prompt_token_ids"] and record["completion_token_ids"]


# ------------------------------------------------------------------------------------- OpenAPI


def test_openapi_describes_every_endpoint_with_openai_field_names(gw):
    document = httpx.get(gw["url"] + "/openapi.json").json()
    schemas = document["components"]["schemas"]
    for path, request, response in (("/v1/chat/completions", "ChatCompletionRequest", "ChatCompletionResponse"),
                                    ("/v1/completions", "CompletionRequest", "CompletionResponse"),
                                    ("/v1/embeddings", "EmbeddingRequest", "EmbeddingResponse")):
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + request)
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + response)
        for status in ("400", "401", "403", "404", "413", "429", "500"):
            assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorResponse")
    assert document["paths"]["/v1/models"]["get"]["responses"]["200"]
    assert {"messages", "model", "max_completion_tokens", "stream_options", "top_logprobs"} <= set(
        schemas["ChatCompletionRequest"]["properties"])
    assert schemas["ChatCompletionRequest"]["required"] == ["model"]
    assert set(schemas["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}
    assert {"id", "object", "created", "model", "choices", "usage"} <= set(schemas["ChatCompletionResponse"]["properties"])
    # The document is what the gateway enforces: a value outside a declared range is refused.
    top_p = schemas["ChatCompletionRequest"]["properties"]["top_p"]["anyOf"][0]
    assert top_p["exclusiveMinimum"] == 0.0 and top_p["maximum"] == 1.0
    _assert_openai_error(_post(gw, "/v1/chat/completions", {"model": "tiny@production", "messages": MESSAGES,
                                                            "top_p": 0}), 400, "top_p")
