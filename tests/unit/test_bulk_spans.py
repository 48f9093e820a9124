"""The bulk span path stores exactly the rows MLflow's own `log_spans` stores, or steps aside."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from llmops.gateway.tracing import RequestTrace

mlflow = pytest.importorskip("mlflow")

ARTIFACTS = "file:///srv/mlflow-artifacts"


def _traces() -> list[RequestTrace]:
    """Gateway traces with what varies in practice: usage or none, errors, non-ASCII text, long inputs,
    tags (one invalid), and child spans or none."""
    traces = []
    for i in range(6):
        trace = RequestTrace("chat.completions")
        now = time.time_ns()
        for name in ("resolve", "render", "generate")[: i % 4]:
            trace.add_span(name, now + 1_000, now + 2_000_000, detail=name, index=i)
        trace.set_tag("llmops.model_version", f"capitals/{i}")
        trace.attributes["llmops.request_id"] = f"req-{i}"
        if i % 2:
            trace.usage = (20 + i, i)
        trace.inputs = {"messages": [{"role": "user", "content": "Où est Zürich? 北京" + "x" * (400 * i)}]}
        trace.outputs = ["Paris"] if i != 3 else None
        trace.error = "replica failed" if i == 4 else None
        trace.end_ns = now + 5_000_000
        traces.append(trace)
    traces[5].tags[""] = "an empty tag key, which MLflow skips"
    return traces


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """`database(name)`: the URI of a new, empty database on SQLite or on a throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path / name}.db"
        return
    from tests.services import postgres_database

    with postgres_database() as uri:
        admin = sqlalchemy.create_engine(uri.replace("llmops@", "postgres@"), isolation_level="AUTOCOMMIT")

        def create(name: str) -> str:
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(f"CREATE DATABASE {name} OWNER llmops"))
            return uri.rsplit("/", 1)[0] + "/" + name

        yield create
        admin.dispose()


def _store(database, name: str):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(database(name), ARTIFACTS)
    return store, store.create_experiment("gateway")


def _rows(store) -> dict[str, list[tuple]]:
    with store.engine.connect() as connection:
        return {table: sorted(tuple(row) for row in connection.execute(sqlalchemy.text(f"SELECT * FROM {table}")))
                for table in ("trace_info", "trace_tags", "trace_request_metadata", "spans")}


@pytest.mark.parametrize("translate", [True, False], ids=["translated", "gateway-spans-untranslated"])
def test_bulk_rows_equal_mlflows_log_spans(database, translate):
    from llmops.gateway.trace_store import mlflow_spans
    from llmops.registry.bulk_spans import bulk_log_spans

    spans = mlflow_spans(_traces(), capture_text=True)
    theirs, their_experiment = _store(database, "mlflow")
    ours, our_experiment = _store(database, "bulk")
    theirs.log_spans(their_experiment, spans)
    assert bulk_log_spans(ours, our_experiment, spans, translate=translate) is True

    expected, got = _rows(theirs), _rows(ours)
    theirs.engine.dispose(), ours.engine.dispose()
    assert len(expected["trace_info"]) == 6 and len(expected["spans"]) == 6 + 0 + 1 + 2 + 3 + 0 + 1
    for table in expected:
        assert got[table] == expected[table], table
    # And what a user reads back is the same.
    ours_read = {info.request_id: info for info in ours.search_traces([our_experiment])[0]}
    assert {info.request_id for info in theirs.search_traces([their_experiment])[0]} == set(ours_read)
    info = ours_read[spans[0].trace_id]
    assert info.tags["llmops.model_version"] == "capitals/0"
    assert info.request_preview.startswith("Où est Zürich? 北京")


def test_batches_it_cannot_store_alike_go_to_mlflow(tmp_path):
    from llmops.gateway.trace_store import mlflow_spans
    from llmops.registry.bulk_spans import BulkSpanStore, bulk_log_spans

    store = BulkSpanStore(f"sqlite:///{tmp_path / 'plugin.db'}", ARTIFACTS)
    experiment = store.create_experiment("gateway")
    spans = mlflow_spans(_traces()[:2], capture_text=True)
    children_only = [span for span in spans if span.parent_id is not None]
    assert bulk_log_spans(store, experiment, children_only) is False  # a trace without its root span
    store.log_spans(experiment, spans)
    assert bulk_log_spans(store, experiment, spans) is False  # already stored: spans merge with MLflow's path
    before = _rows(store)
    store.log_spans(experiment, spans)  # MLflow's upsert: nothing duplicated
    assert _rows(store)["spans"] == before["spans"]
    assert len(before["trace_info"]) == 2


def test_store_plugin_uris(tmp_path):
    from mlflow.tracking._model_registry.utils import _get_store as registry_store
    from mlflow.tracking._tracking_service.utils import _get_store as tracking_store

    from llmops.registry.bulk_spans import BulkSpanStore

    uri = f"llmops+sqlite:///{tmp_path / 'team.db'}"
    store = tracking_store(uri, ARTIFACTS)
    assert isinstance(store, BulkSpanStore)
    assert store.db_uri == f"sqlite:///{tmp_path / 'team.db'}"
    assert registry_store(uri).create_registered_model("capitals").name == "capitals"
