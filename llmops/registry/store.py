"""MLflow set-up: which store the registry uses, and retries for SQLite's single writer.

The embedded default is `sqlite:///<working directory>/mlflow.db` with artifacts in
`<working directory>/mlartifacts`, so one folder holds one user's whole lifecycle.
`MLFLOW_TRACKING_URI` points a team at a tracking server (PostgreSQL + object storage) instead.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = ["tracking_uri", "artifact_root", "configure", "ensure_experiment", "retry_locked"]

T = TypeVar("T")
_DB_FILE = "mlflow.db"


def tracking_uri() -> str:
    """The MLflow tracking URI in force: `MLFLOW_TRACKING_URI`, else the SQLite file in the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / _DB_FILE}"


def artifact_root() -> str | None:
    """Where new experiments keep artifacts: beside a local SQLite file; None (the server decides) otherwise."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


@functools.lru_cache(maxsize=8)
def _client_for(uri: str):
    import mlflow

    # Schema creation logs at INFO on every new store; users need not see alembic at work.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def configure():
    """Point MLflow at the store in force and return an `mlflow.MlflowClient` for it."""
    import mlflow

    uri = tracking_uri()
    client = _client_for(uri)
    if mlflow.get_tracking_uri() != uri:  # the cwd or the variable changed since the client was cached
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return client


def ensure_experiment(name: str) -> str:
    """Return the id of experiment `name`, creating it (artifacts beside the store) if needed."""
    client = configure()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return retry_locked(client.create_experiment)(name, artifact_location=artifact_root())


def _is_locked(error: Exception) -> bool:
    return "database is locked" in str(error)


def retry_locked(fn: Callable[..., T], attempts: int = 8, first_delay: float = 0.05) -> Callable[..., T]:
    """Wrap `fn` to retry with exponential backoff while SQLite answers "database is locked".

    SQLite allows one writer at a time; several processes writing to one embedded store (a fine-tune
    registering while the gateway records traces) would otherwise fail. Teams with many writers use
    a tracking server instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        delay = first_delay
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # MlflowException or sqlalchemy's OperationalError
                if not _is_locked(error) or attempt == attempts - 1:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    return wrapper
