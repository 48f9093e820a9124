"""MLflow store plugins: `llmops+sqlite:///…` and `llmops+postgresql://…` store URIs.

    mlflow server --backend-store-uri llmops+postgresql://USER@HOST/DB --artifacts-destination s3://…

runs MLflow's own server on MLflow's SQL stores, except that span batches of new traces are stored in
bulk (`registry.bulk_spans.BulkSpanStore`): what lets one server keep up with a gateway fleet's traces.
Clients (gateways, `llmops` commands, `mlflow ui`) keep using `http://` or the plain database URI. The
entry points are in `pyproject.toml`. MLflow loads them while `mlflow.tracking` is being imported, so
this module imports nothing heavy until a store is asked for.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["SCHEME_PREFIX", "tracking_store", "registry_store"]

SCHEME_PREFIX = "llmops+"


def _database_uri(store_uri: str) -> str:
    if not store_uri.startswith(SCHEME_PREFIX):
        raise ValueError(f"an llmops store URI starts with {SCHEME_PREFIX!r}")
    return store_uri[len(SCHEME_PREFIX):]


def tracking_store(store_uri: str, artifact_uri: Optional[str] = None) -> Any:
    """Entry point `mlflow.tracking_store`: MLflow's SQL tracking store with bulk span batches."""
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES

    from llmops.registry.bulk_spans import BulkSpanStore

    if MLFLOW_ENABLE_WORKSPACES.get():  # MLflow's workspace-aware store filters every query by workspace
        raise ValueError("the llmops+ store plugin does not support MLflow workspaces (--enable-workspaces): "
                         "give the server the database URI without the llmops+ prefix")

    return BulkSpanStore(_database_uri(store_uri), artifact_uri)


def registry_store(store_uri: str, tracking_uri: Optional[str] = None) -> Any:
    """Entry point `mlflow.model_registry_store`: MLflow's SQL model registry on the same database."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(_database_uri(store_uri))
