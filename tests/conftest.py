"""Test tiers: `tests/unit` (fast, no servers), `tests/integration` (a real MLflow SQLite store, real
servers on 127.0.0.1, the tiny model), `tests/gpu` (marker `gpu`, skipped without a CUDA GPU).

The MLflow schema is created once per session (migrations take seconds) and copied per test.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory) -> Path:
    """An MLflow SQLite file with the schema created, to copy per test."""
    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    client.search_experiments()
    client.search_registered_models()
    return db


@pytest.fixture
def store(_template_store, tmp_path, monkeypatch) -> Path:
    """A fresh embedded store in `tmp_path`, which is also the working directory. Returns the db path."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_template_store, db)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db


@pytest.fixture
def snapshot(store):
    """A function returning every row of every table of the test's store, as SQL text, so a test can
    assert that a failed command changed nothing."""

    def take() -> list[str]:
        connection = sqlite3.connect(store)
        try:
            return list(connection.iterdump())
        finally:
            connection.close()

    return take


@pytest.fixture(scope="session")
def tiny_store(_template_store, tiny_model_path):
    """For module-scoped fixtures: `with tiny_store(folder) as db:` makes `folder` the working directory,
    with a fresh embedded store (MLFLOW_TRACKING_URI) holding the tiny base as `tiny@production`, until
    the block ends."""
    import contextlib

    @contextlib.contextmanager
    def open_store(folder: Path):
        from llmops import registry

        db = folder / "mlflow.db"
        shutil.copy(_template_store, db)
        patch = pytest.MonkeyPatch()
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        try:
            registry.register_base_model("tiny", tiny_model_path)
            registry.set_model_alias("tiny", "production", 1)
            yield db
        finally:
            patch.undo()

    return open_store


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """The tiny base model, built once per test session."""
    from llmops.tiny_model import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def pytest_collection_finish(session):
    """Start the extras resolutions (minutes of network waits, tests/unit/test_extras_resolution.py) as
    soon as the run is collected, so they overlap the other tests instead of adding to them."""
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.endswith("test_extras_resolution"):
            module.start_resolutions(session.items)
            return
