"""What users read about the store in use: its description, its UI command, and one-line failures."""

from __future__ import annotations

import pytest

from llmops.registry.store import describe_store, store_error_message, ui_command


@pytest.mark.parametrize("uri, described, ui", [
    ("sqlite:////w/mlflow.db", "the SQLite store /w/mlflow.db", "mlflow ui --backend-store-uri sqlite:////w/mlflow.db"),
    ("http://mlflow.internal:5000", "the MLflow tracking server at http://mlflow.internal:5000",
     "open http://mlflow.internal:5000 in a browser (the tracking server serves the UI)"),
    ("https://user:secret@mlflow.example/", "the MLflow tracking server at https://mlflow.example/",
     "open https://mlflow.example in a browser (the tracking server serves the UI)"),
    ("postgresql://mlflow:secret@db:5432/mlflow", "PostgreSQL at db:5432/mlflow",
     "mlflow ui --backend-store-uri postgresql://mlflow:***@db:5432/mlflow --default-artifact-root s3://team/art"),
])
def test_store_descriptions_and_ui_commands_hide_passwords(uri, described, ui, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LLMOPS_ARTIFACT_ROOT", "s3://team/art")
    assert describe_store() == described
    assert ui_command() == ui
    assert "secret" not in describe_store() + ui_command()


def test_missing_drivers_name_the_install_command():
    error = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    assert store_error_message(error, "postgresql://u@db/m") == (
        "PostgreSQL at db/m needs the database driver 'psycopg', which is not installed: "
        "run `pip install 'llmops[postgres]'`")
    legacy = ModuleNotFoundError("No module named 'psycopg2'", name="psycopg2")
    assert "postgresql+psycopg://" in store_error_message(legacy, "postgresql+psycopg2://u@db/m")
    assert store_error_message(ModuleNotFoundError("x", name="numpy"), "postgresql://u@db/m") is None
    assert store_error_message(ValueError("bad"), "sqlite:///x.db") is None
