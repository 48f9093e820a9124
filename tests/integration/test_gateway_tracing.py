"""The trace exporter against a real MLflow SQLite store: bulk writes read back by MLflow's own API,
sampling, a bounded queue that drops (and counts) instead of blocking, flush on close."""

from __future__ import annotations

import time

import pytest


def _trace(tracer, name="chat.completions", version="tiny/1"):
    trace = tracer.begin(name)
    if trace is None:
        return None
    now = time.time_ns()
    for span in ("resolve", "render", "generate"):
        trace.add_span(span, now, now + 1000)
    trace.set_tag("llmops.model_version", version)
    trace.attributes["llmops.time_to_first_token_ms"] = 1.5
    trace.usage = (7, 3)
    trace.inputs, trace.outputs = {"messages": [{"role": "user", "content": "héllo"}]}, ["wörld"]
    tracer.submit(trace)
    return trace


def _stored(experiment):
    import mlflow

    from llmops.registry.store import ensure_experiment

    return mlflow.search_traces(locations=[ensure_experiment(experiment)], max_results=10_000, return_type="list")


def test_bulk_written_traces_read_back_through_mlflow(store):
    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import Tracer

    tracer = Tracer(writer_for("t"), flush_interval=0.05)
    for i in range(300):
        _trace(tracer, version=f"tiny/{1 + i % 2}")
    tracer.close()
    traces = _stored("t")
    assert len(traces) == 300 and tracer.stats.written == 300 and tracer.stats.dropped == 0
    trace = traces[0]
    assert trace.info.state.value == "OK" if hasattr(trace.info.state, "value") else trace.info.state == "OK"
    assert trace.info.token_usage == {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    assert "héllo" in trace.info.request_preview and "wörld" in trace.info.response_preview
    assert sorted(s.name for s in trace.data.spans) == ["chat.completions", "generate", "render", "resolve"]
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert root.attributes["llmops.time_to_first_token_ms"] == 1.5
    import mlflow

    from llmops.registry.store import ensure_experiment

    only_2 = mlflow.search_traces(locations=[ensure_experiment("t")], return_type="list", max_results=1000,
                                  filter_string="tags.`llmops.model_version` = 'tiny/2'")
    assert len(only_2) == 150


def test_full_queue_drops_and_counts(store):
    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import Tracer

    tracer = Tracer(writer_for("q"), flush_interval=3600, max_queue=5)
    for _ in range(8):
        _trace(tracer)
    assert tracer.stats.dropped == 3
    assert tracer.flush(30)
    tracer.close()
    assert len(_stored("q")) == 5 and tracer.stats.written == 5


@pytest.mark.parametrize("ratio, low, high", [(0.0, 0, 0), (0.5, 350, 650), (1.0, 1000, 1000)])
def test_sampling_ratio(store, ratio, low, high):
    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import Tracer

    tracer = Tracer(writer_for("s"), sample_ratio=ratio, flush_interval=0.05)
    sampled = sum(tracer.begin("x") is not None for _ in range(1000))
    tracer.close()
    assert low <= sampled <= high
