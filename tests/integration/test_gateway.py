"""The gateway end to end: a real uvicorn server on 127.0.0.1 with the tiny model, a LoRA adapter and a
registry prompt, driven by the official `openai` client, LangChain's `ChatOpenAI` and raw httpx.

The server starts once for the module (loading the model takes seconds); each test asserts what a
client sees: texts, usage, headers, error shapes, metrics, and the traces left in the MLflow store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

REQUESTS_WITH_TRACES: list[str] = []  # x-request-id of requests whose traces a test checks
TRACE_IDS: dict[str, str] = {}  # x-request-id -> x-llmops-trace-id


def make_adapter(base_path: Path, out: Path, seed: int) -> Path:
    """A random-init LoRA adapter (different outputs from the base) saved with peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gateway(tiny_store, tiny_model_path, tmp_path_factory):
    """A running gateway: tiny@production (base), capitals@production (adapter v1; v2 registered), a prompt."""
    import torch

    from llmops import registry
    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.server import BackgroundServer

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("gateway")
    with tiny_store(folder):
        for seed in (1, 2):
            adapter = make_adapter(tiny_model_path, folder / f"adapter{seed}", seed)
            registry.register_adapter("capitals", adapter, base="tiny/1", alias="production" if seed == 1 else None)
        registry.register_prompt("capital-qa", [
            {"role": "system", "content": "You answer with one word."},
            {"role": "user", "content": "What is the capital of {{ country }}?"},
        ], alias="production", model_config={"temperature": 0.0})
        config = GatewayConfig(models=None, refresh_interval=0.5,
                               tracing={"flush_interval": 0.2, "experiment": "gateway-test"},
                               limits={"max_body_bytes": 4096, "max_tokens": 400, "default_max_tokens": 16})
        app = create_app(config)
        server = BackgroundServer(app).start()
        base_url = server.url
        yield {"url": base_url, "app": app, "folder": folder}
        server.stop()


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)


def _remember(raw):
    REQUESTS_WITH_TRACES.append(raw.headers["x-request-id"])
    TRACE_IDS[raw.headers["x-request-id"]] = raw.headers["x-llmops-trace-id"]
    return raw.parse()


def test_chat_completion_on_base_and_adapter(client):
    raw = client.chat.completions.with_raw_response.create(
        model="tiny@production", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0)
    assert raw.headers["x-llmops-model-version"] == "tiny/1"
    base = _remember(raw)
    assert base.object == "chat.completion" and base.model == "tiny@production"
    assert base.choices[0].finish_reason in {"stop", "length"}
    assert base.usage.completion_tokens <= 8 and base.usage.prompt_tokens > 5
    assert base.usage.total_tokens == base.usage.prompt_tokens + base.usage.completion_tokens

    raw = client.chat.completions.with_raw_response.create(
        model="capitals@production", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0)
    assert raw.headers["x-llmops-model-version"] == "capitals/1"
    adapted = _remember(raw)
    assert adapted.choices[0].message.content != base.choices[0].message.content  # the adapter is applied
    again = _remember(client.chat.completions.with_raw_response.create(
        model="capitals/1", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0))
    assert again.choices[0].message.content == adapted.choices[0].message.content  # greedy is deterministic


def test_streaming_chat_with_usage_in_last_chunk(client):
    messages = [{"role": "user", "content": "Name a city."}]
    whole = client.chat.completions.create(model="capitals@production", messages=messages, max_tokens=12, temperature=0)
    raw = client.chat.completions.with_raw_response.create(
        model="capitals@production", messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    REQUESTS_WITH_TRACES.append(raw.headers["x-request-id"])
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_n_seed_and_logprobs(client):
    result = _remember(client.chat.completions.with_raw_response.create(
        model="tiny@production", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, n=2,
        temperature=1.0, seed=7, logprobs=True, top_logprobs=2))
    assert [c.index for c in result.choices] == [0, 1]
    assert result.choices[0].message.content != result.choices[1].message.content  # seeds 7 and 8
    for choice in result.choices:
        assert len(choice.logprobs.content) >= 1
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in choice.logprobs.content)
    repeat = client.chat.completions.create(
        model="tiny@production", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, n=2,
        temperature=1.0, seed=7)
    assert [c.message.content for c in repeat.choices] == [c.message.content for c in result.choices]


def test_stop_sequences_cut_the_text(client):
    free = client.completions.create(model="tiny@production", prompt="The capital of", max_tokens=16, temperature=0)
    text = free.choices[0].text
    assert len(text) > 3
    stop = text[2:4]
    cut = _remember(client.completions.with_raw_response.create(
        model="tiny@production", prompt="The capital of", max_tokens=16, temperature=0, stop=[stop]))
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.find(stop)]
    streamed = client.completions.create(model="tiny@production", prompt="The capital of", max_tokens=16,
                                         temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text[: text.find(stop)]


def test_completions_and_echo(client):
    result = _remember(client.completions.with_raw_response.create(
        model="capitals@production", prompt=["Paris is", "Rome is"], max_tokens=5, temperature=0, echo=True))
    assert [c.index for c in result.choices] == [0, 1]
    assert result.choices[0].text.startswith("Paris is") and result.choices[1].text.startswith("Rome is")
    assert result.usage.completion_tokens <= 10


def test_models_list_shows_versions_and_parents(client):
    cards = {m.id: m for m in client.models.list().data}
    assert cards["tiny@production"].root == "tiny/1" and cards["tiny@production"].parent is None
    assert cards["capitals@production"].parent == "tiny/1"
    assert cards["capitals"].root == "capitals/2"  # the bare name is the latest version


def test_embeddings(client):
    result = client.embeddings.create(model="tiny@production", input=["hello world", "hello world", "Tokyo"])
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 3 and len(vectors[0]) == 64
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-4
    assert vectors[0] == vectors[1] and vectors[0] != vectors[2]
    assert result.usage.prompt_tokens > 0
    b64 = client.embeddings.create(model="capitals@production", input="hello world", encoding_format="base64")
    import base64
    import struct

    decoded = struct.unpack("<64f", base64.b64decode(b64.data[0].embedding))
    assert max(abs(a - b) for a, b in zip(decoded, vectors[0])) < 1e-6  # adapters do not change embeddings


def test_registry_prompt_with_variables(client):
    raw = client.chat.completions.with_raw_response.create(
        model="capitals@production", messages=[], max_tokens=8,
        extra_body={"prompt": "capital-qa@production", "variables": {"country": "France"}})
    assert raw.headers["x-llmops-prompt-version"] == "capital-qa/1"
    rendered = _remember(raw)
    direct = client.chat.completions.create(model="capitals@production", max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "You answer with one word."},
        {"role": "user", "content": "What is the capital of France?"}])
    assert rendered.choices[0].message.content == direct.choices[0].message.content  # temperature 0 from the prompt

    with pytest.raises(openai.BadRequestError) as missing:
        client.chat.completions.create(model="capitals@production", messages=[],
                                       extra_body={"prompt": "capital-qa@production", "variables": {}})
    assert "country" in missing.value.body["message"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="capitals@production", messages=[],
                                       extra_body={"prompt": "no-such-prompt@production", "variables": {}})
    assert unknown.value.body["code"] == "prompt_not_found"


def test_langchain_chat_openai(gateway):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="capitals@production", base_url=gateway["url"] + "/v1", api_key="unused",
                     temperature=0, max_tokens=8, max_retries=0)
    reply = llm.invoke("What is the capital of Japan?")
    assert isinstance(reply.content, str) and reply.usage_metadata["output_tokens"] >= 1
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of Japan?"))
    assert streamed == reply.content


def test_langchain_chain_of_registry_prompt_and_gateway_model(gateway):
    from llmops import registry
    from llmops.integrations.langchain import chat_model, chat_prompt

    registry.register_prompt("lc-capitals", [{"role": "user", "content": "What is the capital of {{ country }}?"}])
    chain = chat_prompt("lc-capitals") | chat_model("tiny@production", base_url=gateway["url"], temperature=0, max_tokens=4)
    reply = chain.invoke({"country": "Japan"})
    assert isinstance(reply.content, str) and reply.response_metadata["model_name"] == "tiny@production"


def test_concurrent_requests_batch_together(client, gateway):
    from concurrent.futures import ThreadPoolExecutor

    models = ["tiny@production", "capitals@production"] * 4
    def ask(model):
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=8, temperature=0).choices[0].message.content
    alone = {m: ask(m) for m in set(models)}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, models))
    assert together == [alone[m] for m in models]  # mixed adapters in one batch give the same tokens


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b'{"model": "tiny@production"}', 400, "messages"),
    (b'{"model": "tiny@production", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}', 400,
     "temperature"),
    (b'{"model": "nope@production", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    (b'{"model": "tiny@production", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400,
     "max_tokens"),
    (b'{"model": "tiny@production", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
    (b'[1, 2]', 400, None),
    (b'{"model": "tiny@production", "prompt": "x' + b"y" * 5000 + b'"}', 413, None),
])
def test_bad_input_gets_a_4xx_in_openai_shape(gateway, body, status, param):
    url = gateway["url"] + ("/v1/completions" if b'"prompt"' in body else "/v1/chat/completions")
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param:
        assert error["param"] == param
    ok = httpx.post(gateway["url"] + "/v1/chat/completions", timeout=30, json={
        "model": "tiny@production", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200  # still serving


def test_unknown_fields_are_accepted(client):
    result = client.chat.completions.create(model="tiny@production", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=2, extra_body={"some_future_field": {"x": 1}, "top_k": 5,
                                                                      "repetition_penalty": 1.2})
    assert result.choices[0].message.content is not None


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(gateway, stream):
    engine = next(iter(gateway["app"].backend.router.engines().values()))
    aborted = engine.stats()["aborted"]
    body = {"model": "tiny@production", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
            "ignore_eos": True, "stream": stream}
    if stream:
        with httpx.stream("POST", gateway["url"] + "/v1/chat/completions", timeout=30, json=body) as response:
            next(response.iter_lines())
    else:
        with pytest.raises(httpx.ReadTimeout):  # gives up after 0.3 s of the ~2 s generation
            httpx.post(gateway["url"] + "/v1/chat/completions", timeout=0.3, json=body)
    deadline = time.monotonic() + 10
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.stats()["running"] == 0 and engine.stats()["aborted"] == aborted + 1


def test_alias_move_is_followed_without_restart(client):
    from llmops import registry

    ask = lambda: client.chat.completions.with_raw_response.create(  # noqa: E731
        model="capitals@production", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert ask().headers["x-llmops-model-version"] == "capitals/1"
    in_flight = client.chat.completions.with_raw_response.create(
        model="capitals@production", messages=[{"role": "user", "content": "Hi"}], max_tokens=300, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    assert in_flight.headers["x-llmops-model-version"] == "capitals/1"
    registry.set_model_alias("capitals", "production", 2, reason="test")
    deadline = time.monotonic() + 15
    while ask().headers["x-llmops-model-version"] != "capitals/2":
        assert time.monotonic() < deadline, "the moved alias was not served"
        time.sleep(0.2)
    assert ask().headers["x-llmops-model-version"] == "capitals/2"
    chunks = list(in_flight.parse())  # the request that started on version 1 finishes on it
    assert chunks[-1].usage.completion_tokens == 300
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    registry.set_model_alias("capitals", "production", 1, reason="back")


def test_metrics_count_requests_and_tokens(gateway, client):
    before = _metric(gateway, 'llmops:generation_tokens_total{model="tiny",version="1"}')
    done = client.chat.completions.create(model="tiny@production", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5, temperature=0)
    text = httpx.get(gateway["url"] + "/metrics").text
    after = _metric(gateway, 'llmops:generation_tokens_total{model="tiny",version="1"}')
    assert after - before == done.usage.completion_tokens
    for name in ("llmops:requests_total", "llmops:prompt_tokens_total", "llmops:num_requests_running",
                 "llmops:time_to_first_token_seconds_bucket", "llmops:inter_token_latency_seconds_bucket",
                 "llmops:e2e_request_latency_seconds_bucket", 'llmops:background_written_total{writer="traces"}'):
        assert name in text
    assert 'status="404"' in text and 'status="400"' in text and 'status="200"' in text


def _metric(gateway, series: str) -> float:
    for line in httpx.get(gateway["url"] + "/metrics").text.splitlines():
        if line.startswith(series.split("{")[0]) and _same_labels(line, series):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _same_labels(line: str, series: str) -> bool:
    want = set(series[series.index("{") + 1: series.index("}")].split(","))
    have = set(line[line.index("{") + 1: line.index("}")].split(",")) if "{" in line else set()
    return want <= have and line.split("{")[0] == series.split("{")[0]


def test_each_request_leaves_one_trace(gateway):
    import mlflow

    from llmops.registry.store import ensure_experiment

    tracer = gateway["app"].tracer
    assert tracer.flush(30)
    assert tracer.stats.dropped == 0 and tracer.stats.failed == 0 and tracer.stats.queued == 0
    experiment = ensure_experiment("gateway-test")
    traces = mlflow.search_traces(locations=[experiment], max_results=5000, return_type="list")
    assert len(traces) == tracer.stats.written  # one per request, all stored
    by_request = {}
    for trace in traces:
        root = next(s for s in trace.data.spans if s.parent_id is None)
        by_request.setdefault(root.attributes["llmops.request_id"], []).append(trace)
    for request_id in REQUESTS_WITH_TRACES:
        assert len(by_request[request_id]) == 1
        trace = by_request[request_id][0]
        if request_id in TRACE_IDS:
            assert trace.info.trace_id == TRACE_IDS[request_id]  # the header names the stored trace
        names = {s.name for s in trace.data.spans}
        assert {"resolve", "render", "generate"} <= names
        root = next(s for s in trace.data.spans if s.parent_id is None)
        assert root.attributes["llmops.model_version"] in {"tiny/1", "capitals/1", "capitals/2"}
        assert root.attributes["llmops.time_to_first_token_ms"] > 0 and root.attributes["llmops.latency_ms"] > 0
        assert trace.info.token_usage["output_tokens"] == root.attributes["llmops.completion_tokens"] >= 1
        assert trace.info.tags["llmops.model_version"] == root.attributes["llmops.model_version"]
    prompted = [t for t in traces if t.info.tags.get("llmops.prompt_version") == "capital-qa/1"]
    assert prompted  # the registry-prompt request carries its prompt version
