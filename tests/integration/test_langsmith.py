"""LangSmith export end to end: the real `langsmith` SDK posting to a local HTTP receiver on 127.0.0.1
that records the runs, from a real gateway (tiny model, openai client) and from an eval run logged with
`log_eval_run`."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("langsmith")
openai = pytest.importorskip("openai")


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.runs: dict[str, dict] = {}  # run id -> the run as posted (patches merged)
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def record(self, post: list, patch: list) -> None:
        with self.lock:
            for run in post:
                self.runs[run["id"]] = run
            for run in patch:
                self.runs.setdefault(run["id"], {}).update(run)

    def wait_for(self, predicate, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [run for run in self.runs.values() if predicate(run)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def children(self, parent: dict) -> list[dict]:
        with self.lock:
            return [run for run in self.runs.values() if run.get("parent_run_id") == parent["id"]]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.paths.append(f"GET {self.path}")
        if self.path.startswith("/info"):
            # Minimal server info: no multipart endpoint, no compression, so the SDK posts plain JSON.
            self._reply(200, {"version": "0.0.0-test",
                              "batch_ingest_config": {"use_multipart_endpoint": False}})
        else:
            self._reply(404, {"detail": "not found"})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        self.server.paths.append(f"POST {self.path}")
        assert self.headers.get("x-api-key") == "test"
        if self.path == "/runs/batch":
            payload = json.loads(body)
            self.server.record(payload.get("post", []), payload.get("patch", []))
            self._reply(202, {})
        elif self.path == "/runs":
            self.server.record([json.loads(body)], [])
            self._reply(202, {})
        else:  # /runs/multipart and the rest: the SDK falls back to /runs/batch on 404
            self._reply(404, {"detail": "not found"})


@pytest.fixture(scope="module")
def receiver():
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    patch = pytest.MonkeyPatch()
    patch.setenv("LANGSMITH_TRACING", "true")
    patch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    patch.setenv("LANGSMITH_API_KEY", "test")
    patch.delenv("LANGSMITH_PROJECT", raising=False)
    yield server
    patch.undo()
    from langsmith import utils as ls_utils

    ls_utils.get_env_var.cache_clear()  # the SDK caches environment variables: forget the test's
    ls_utils.get_tracer_project.cache_clear()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(receiver, tiny_store, tmp_path_factory):
    import torch

    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.server import BackgroundServer

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("gateway-langsmith")
    with tiny_store(folder):
        config = GatewayConfig(models=None, tracing={"flush_interval": 0.1, "experiment": "gateway-test"},
                               limits={"default_max_tokens": 8})
        app = create_app(config)
        server = BackgroundServer(app).start()
        yield {"url": server.url, "app": app}
        server.stop()


def test_gateway_request_becomes_a_langsmith_run_tree(receiver, gateway):
    client = openai.OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)
    question = "What is the capital of France?"
    raw = client.chat.completions.with_raw_response.create(
        model="tiny@production", messages=[{"role": "user", "content": question}], max_tokens=6, temperature=0)
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    tracer = gateway["app"].tracer
    assert tracer.flush(30) and tracer.stats.failed == 0

    roots = receiver.wait_for(lambda run: run.get("extra", {}).get("metadata", {}).get("request_id") == request_id)
    assert len(roots) == 1, receiver.paths
    root = roots[0]
    assert root["name"] == "chat.completions" and root["run_type"] == "chain"
    assert root["trace_id"] == root["id"] and not root.get("parent_run_id")
    assert root["session_name"] == "llmops-gateway"
    assert root["inputs"]["messages"] == [{"role": "user", "content": question}]
    assert root["outputs"]["output"] == completion.choices[0].message.content
    metadata = root["extra"]["metadata"]
    assert metadata["model_version"] == "tiny/1" and metadata["model"] == "tiny@production"
    assert metadata["prompt_tokens"] == completion.usage.prompt_tokens
    assert metadata["completion_tokens"] == completion.usage.completion_tokens
    assert metadata["latency_ms"] > 0 and metadata["mlflow_trace_id"] == raw.headers["x-llmops-trace-id"]
    assert root["start_time"] <= root["end_time"]

    children = {run["name"]: run for run in receiver.children(root)}
    assert set(children) == {"resolve", "render", "generate"}
    for child in children.values():
        assert child["trace_id"] == root["id"]
        assert child["dotted_order"].startswith(root["dotted_order"] + ".")
        assert root["start_time"] <= child["start_time"] <= child["end_time"] <= root["end_time"]
        assert child["extra"]["metadata"]["model_version"] == "tiny/1"
    assert children["resolve"]["outputs"]["version"] == "tiny/1"
    generate = children["generate"]
    assert generate["run_type"] == "llm"
    assert generate["inputs"]["messages"][0]["content"] == question
    assert generate["outputs"]["output"] == completion.choices[0].message.content
    assert generate["outputs"]["usage_metadata"]["output_tokens"] == completion.usage.completion_tokens


def test_eval_run_becomes_a_root_run_with_one_child_per_item(receiver, store, tiny_model_path):
    from llmops import registry
    from llmops.evaluation.runner import EvalResult, ItemResult, ScorerSummary
    from llmops.evaluation.tracking import log_eval_run

    registry.register_base_model("tiny", tiny_model_path)
    rows = [{"country": "France", "capital": "Paris"}, {"country": "Japan", "capital": "Tokyo"}]
    items = [ItemResult(row["country"], f"h{i}", "p", row, [answer], {"correct": score})
             for i, (row, answer, score) in enumerate(zip(rows, ["Paris", "Kyoto"], [1.0, 0.0]))]
    result = EvalResult(suite="mini", suite_version="1", model_ref="tiny/1", model_version="tiny/1",
                        prompt_ref="capitals-qa/2", items=items,
                        summaries={"correct": ScorerSummary("correct", 0.5, 0.0, 1.0, 2, 0)},
                        slices={}, generated=2, cached=0, seconds=1.5)
    run_id = log_eval_run(result)

    roots = receiver.wait_for(lambda run: run["name"] == "eval:mini", timeout=5)
    assert len(roots) == 1
    root = roots[0]
    assert root["session_name"] == "llmops-eval" and root["trace_id"] == root["id"]
    metadata = root["extra"]["metadata"]
    assert metadata["suite"] == "mini" and metadata["suite_version"] == "1"
    assert metadata["model_version"] == "tiny/1" and metadata["prompt_version"] == "capitals-qa/2"
    assert metadata["mlflow_run_id"] == run_id
    assert root["outputs"]["means"] == {"correct": 0.5}
    children = {run["name"]: run for run in receiver.children(root)}
    assert set(children) == {"item:France", "item:Japan"}
    france, japan = children["item:France"], children["item:Japan"]
    assert france["inputs"] == rows[0] and france["outputs"] == {"answer": "Paris", "scores": {"correct": 1.0}}
    assert japan["outputs"]["scores"] == {"correct": 0.0} and japan["outputs"]["answer"] == "Kyoto"
    for child in (france, japan):
        assert child["trace_id"] == root["id"] and child["dotted_order"].startswith(root["dotted_order"] + ".")
        assert child["extra"]["metadata"]["model_version"] == "tiny/1"
