"""Gateway traces into a real `mlflow server` over HTTP: one batched OTLP request per flush, and the same
stored content as the bulk SQL path of the embedded SQLite store (read back with `mlflow.search_traces`)."""

from __future__ import annotations

import random
import time

import pytest

from tests.services import mlflow_server

EXPERIMENT = "remote-tracing"


def _traces(seed: int, count: int):
    """Deterministic traces (ids, times, attributes) as the gateway's request path fills them."""
    from llmops.gateway.tracing import RequestTrace

    rng = random.Random(seed)
    start = 1_790_000_000_000_000_000
    traces = []
    for i in range(count):
        trace = RequestTrace("chat.completions", otel_id=rng.getrandbits(128), start_ns=start + i * 10_000_000)
        t = trace.start_ns
        trace.add_span("resolve", t + 1000, t + 2000, version="tiny/1")
        trace.add_span("render", t + 2000, t + 3000, prompt_tokens=7)
        trace.add_span("generate", t + 3000, t + 9_000_000, finish_reasons=["stop"], n=1)
        trace.set_tag("llmops.model", "tiny@production")
        trace.set_tag("llmops.model_version", f"tiny/{1 + i % 2}")
        trace.attributes.update({"llmops.request_id": f"req-{seed}-{i}", "llmops.status": 200,
                                 "llmops.latency_ms": 9.5, "llmops.time_to_first_token_ms": 1.25})
        trace.usage = (7, 3 + i % 4)
        trace.inputs = {"messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": f"héllo {i}"}], "temperature": 0.0}
        trace.outputs = [f"wörld {i}"]
        trace.error = "boom" if i % 10 == 9 else None
        trace.end_ns = t + 10_000_000
        traces.append(trace)
    return traces


def _read_back(experiment_id: str) -> dict:
    import mlflow

    found = mlflow.search_traces(locations=[experiment_id], max_results=10_000, return_type="list")
    result = {}
    for trace in found:
        info = trace.info
        tags = {k: v for k, v in info.tags.items() if k != "mlflow.artifactLocation"}  # differs by store
        spans = sorted((s.name, s.span_type, s.status.status_code, s.start_time_ns, s.end_time_ns,
                        s.parent_id is None, sorted(s.attributes.items(), key=str)) for s in trace.data.spans)
        result[info.trace_id] = {
            "state": str(info.state), "request_time": info.request_time, "duration": info.execution_duration,
            "request_preview": info.request_preview, "response_preview": info.response_preview,
            "token_usage": info.token_usage, "tags": tags, "spans": spans,
        }
    return result


def _write(count: int) -> tuple[dict, object]:
    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import Tracer
    from llmops.registry.store import ensure_experiment

    writer = writer_for(EXPERIMENT)
    tracer = Tracer(writer, flush_interval=0.05, max_batch=500)
    for trace in _traces(seed=7, count=count):
        tracer.submit(trace)
    assert tracer.flush(120)
    tracer.close()
    return _read_back(ensure_experiment(EXPERIMENT)), tracer


@pytest.mark.parametrize("scheme", ["sqlite", "llmops+sqlite"], ids=["mlflow-store", "llmops-store-plugin"])
def test_server_traces_match_the_sqlite_ones(store, tmp_path, monkeypatch, scheme):
    """The gateway's traces read back the same from the embedded store (bulk rows), a stock server
    (MLflow's `log_spans`) and a server on the `llmops+` store plugin (bulk rows behind `/v1/traces`)."""
    from llmops.gateway.trace_store import RestTraceWriter, writer_for

    embedded, _ = _write(60)
    with mlflow_server(f"{scheme}:///{tmp_path / 'server.db'}", tmp_path / "server") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        assert isinstance(writer_for(EXPERIMENT), RestTraceWriter)
        remote, tracer = _write(60)
    assert tracer.stats.written == 60 and tracer.stats.failed == 0 and tracer.stats.dropped == 0
    assert tracer.stats.batches <= 3  # batched: not one request per trace
    assert set(remote) == set(embedded) and len(remote) == 60
    for trace_id, stored in embedded.items():
        assert remote[trace_id] == stored, trace_id
    sample = next(iter(embedded.values()))
    assert sample["request_preview"].startswith("héllo") and sample["response_preview"].startswith('["wörld')
    assert sample["tags"]["llmops.request_id"].startswith("req-7-")


def test_unreachable_server_counts_failures_and_never_blocks_the_request_path(store, monkeypatch):
    from llmops.gateway.trace_store import RestTraceWriter
    from llmops.gateway.tracing import Tracer
    from tests.services import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow

    store_ = mlflow.tracking._tracking_service.utils._get_store(f"http://127.0.0.1:{free_port()}")
    tracer = Tracer(RestTraceWriter(store_, "0"), flush_interval=0.05)
    started = time.perf_counter()
    for trace in _traces(seed=3, count=20):
        tracer.submit(trace)
    assert time.perf_counter() - started < 1.0  # queued, not sent, on the request path
    tracer.flush(60)
    tracer.close()
    assert tracer.stats.failed == 20 and tracer.stats.written == 0
