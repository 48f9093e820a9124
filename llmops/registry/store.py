"""MLflow set-up: which store the registry uses, what to tell users when it fails, and retries for
SQLite's single writer.

Four stores work the same way (see README "Team set-up"):

- the embedded default `sqlite:///<working directory>/mlflow.db`, artifacts in `<cwd>/mlartifacts`;
- `postgresql://…` directly (driver: `pip install 'llmops[postgres]'`), artifacts in `<cwd>/mlartifacts`;
- an `mlflow server` over HTTP with proxied artifacts (`--artifacts-destination`);
- the same server with `--no-serve-artifacts` and a shared `--default-artifact-root`.

`MLFLOW_TRACKING_URI` chooses; nothing else in llmops needs to know which.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from llmops.errors import RegistryError

__all__ = [
    "tracking_uri", "artifact_root", "configure", "ensure_experiment", "retry_locked", "upsert_tag",
    "describe_store", "ui_command", "store_error_message",
]

T = TypeVar("T")
_DB_FILE = "mlflow.db"
_DRIVERS = {"psycopg", "psycopg2", "pg8000", "asyncpg", "pymysql", "MySQLdb", "mysqlclient"}


def tracking_uri() -> str:
    """The MLflow tracking URI in force: `MLFLOW_TRACKING_URI`, else the SQLite file in the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / _DB_FILE}"


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_root() -> str | None:
    """Where new experiments keep artifacts: `LLMOPS_ARTIFACT_ROOT` when set (a shared folder or `s3://…`,
    for a team on a direct database URI), else beside a local SQLite file, or `<cwd>/mlartifacts` for
    a direct database URI; None for a tracking server (the server decides)."""
    uri = tracking_uri()
    if _is_server(uri):
        return None
    if os.environ.get("LLMOPS_ARTIFACT_ROOT"):
        root = os.environ["LLMOPS_ARTIFACT_ROOT"]
        return root if "://" in root else Path(root).expanduser().resolve().as_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return (Path.cwd() / "mlartifacts").as_uri()


def describe_store(uri: str | None = None) -> str:
    """The store for messages: `the MLflow tracking server at http://…`, `PostgreSQL at host:port/db`,
    `the SQLite store /path/mlflow.db`. Passwords never appear."""
    uri = uri or tracking_uri()
    if _is_server(uri):
        return f"the MLflow tracking server at {re.sub(r'//[^@/]*@', '//', uri)}"
    if uri.startswith("sqlite:///"):
        return f"the SQLite store {uri.removeprefix('sqlite:///')}"
    scheme, _, rest = uri.partition("://")
    where = rest.rpartition("@")[2]
    kind = "PostgreSQL" if scheme.startswith("postgres") else scheme.split("+")[0]
    return f"{kind} at {where}"


def ui_command(uri: str | None = None) -> str:
    """The command that shows this store's runs, models, prompts and traces in MLflow's UI."""
    uri = uri or tracking_uri()
    if _is_server(uri):
        return f"open {re.sub(r'//[^@/]*@', '//', uri).rstrip('/')} in a browser (the tracking server serves the UI)"
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}"
    # Hide a password: the user has it in MLFLOW_TRACKING_URI already.
    shown = re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)
    return f"mlflow ui --backend-store-uri {shown} --default-artifact-root {artifact_root()}"


@functools.lru_cache(maxsize=8)
def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server does not answer."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy without /health, an auth wall): let MLflow's own call speak
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise RegistryError(
            f"cannot reach {describe_store(uri)} ({reason}): start it (`mlflow server …`, see README "
            "\"Team set-up\") or point MLFLOW_TRACKING_URI at a running one") from None


@functools.lru_cache(maxsize=8)
def _check_database(uri: str) -> None:
    """Name a missing driver or an unreachable database in seconds (MLflow retries for minutes)."""
    import socket

    from sqlalchemy.engine.url import make_url

    from llmops.mlflow_plugin import SCHEME_PREFIX

    url = make_url(uri.removeprefix(SCHEME_PREFIX))  # the store plugin's URIs
    try:
        url.get_dialect().import_dbapi()
    except ImportError as error:
        raise RegistryError(store_error_message(error, uri) or str(error)) from None
    if url.host:
        default_port = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(url.get_backend_name(), 0)
        try:
            socket.create_connection((url.host, url.port or default_port), timeout=10).close()
        except OSError as error:
            raise RegistryError(
                f"cannot reach {describe_store(uri)} ({error}): start the database or fix MLFLOW_TRACKING_URI "
                "(see README \"Team set-up\")") from None


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
    """Point MLflow at the store in force and return an `mlflow.MlflowClient` for it.

    Raises:
        RegistryError: a tracking server that does not answer, or a database driver that is missing.
    """
    import mlflow

    uri = tracking_uri()
    if _is_server(uri):
        _check_reachable(uri)
    elif "://" in uri and not uri.startswith(("sqlite:", "file:", "databricks")):
        _check_database(uri)
    try:
        client = _client_for(uri)
    except ImportError as error:
        message = store_error_message(error, uri)
        if message:
            raise RegistryError(message) from None
        raise
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
    try:
        return retry_locked(client.create_experiment)(name, artifact_location=artifact_root())
    except Exception as error:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise error
        return experiment.experiment_id


def store_error_message(error: BaseException, uri: str | None = None) -> str | None:
    """One line for a store failure that is not llmops' own error, or None when `error` is not one.

    Covers a missing database driver, a database or server that does not answer, and a request the
    server refused; each names the store and what to do.
    """
    uri = uri or tracking_uri()
    store = describe_store(uri)
    if isinstance(error, ImportError) and (error.name or "").split(".")[0] in _DRIVERS:
        if error.name == "psycopg2":
            return (f"{store} needs the database driver 'psycopg2', which is not installed: write the URI as "
                    "postgresql+psycopg://… after `pip install 'llmops[postgres]'`, or `pip install psycopg2-binary`")
        extra = "postgres" if "postgres" in uri else "mysql"
        return (f"{store} needs the database driver {error.name!r}, which is not installed: "
                f"run `pip install 'llmops[{extra}]'`")
    text = str(error)
    kind = type(error).__name__
    if kind == "OperationalError" or "could not connect" in text or "Connection refused" in text \
            or "Max retries exceeded" in text:
        first = text.strip().splitlines()[0][:300] if text.strip() else kind
        return (f"cannot reach {store} ({first}): start it or fix MLFLOW_TRACKING_URI "
                "(see README \"Team set-up\")")
    if kind in ("RestException", "MlflowException"):
        code = getattr(error, "error_code", "") or ""
        message = getattr(error, "message", text).strip().splitlines()[0][:400]
        what = "refused the request" if _is_server(uri) else "failed"
        hint = {"PERMISSION_DENIED": "ask an admin for permission on this resource",
                "UNAUTHENTICATED": "set MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN"}.get(
            code, "--debug shows the traceback; the server log says more")
        return f"{store} {what}: {message} ({hint})"
    return None


def _is_locked(error: Exception) -> bool:
    return "database is locked" in str(error)


def _lost_insert_race(error: Exception) -> bool:
    text = str(error).lower()
    return "unique" in text or "duplicate" in text


def upsert_tag(fn: Callable[..., T], *args: Any) -> T:
    """Call an MLflow `set_*_tag` method `fn(*args)`, safe against a concurrent writer of the same key.

    MLflow's SQL stores set a tag by a read, then an insert when the key is new: two processes
    writing one new key at once both insert, and the second breaks the tag's primary key (PostgreSQL,
    MySQL; a tracking server answers 400). By then the row exists, so once more updates it: the last
    writer wins, as with any tag.
    """
    try:
        return retry_locked(fn)(*args)
    except Exception as error:
        if not _lost_insert_race(error):
            raise
        return retry_locked(fn)(*args)


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
