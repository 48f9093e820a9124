"""`llmops serve`: run the OpenAI-compatible gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["serve", "register"]


def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Gateway config (serving/gateway.yaml)."),
    host: Optional[str] = typer.Option(None, help="Interface to bind (overrides the config's host)."),
    port: Optional[int] = typer.Option(None, help="TCP port (overrides the config's port)."),
    override: list[str] = typer.Argument(None, help="Config overrides key.sub=value (e.g. tracing.enabled=false)."),
) -> None:
    """Serve registry models over an OpenAI-compatible API (model="NAME@ALIAS")."""
    import uvicorn

    from llmops.config import apply_overrides, validate_data
    from llmops.gateway.app import create_app
    from llmops.gateway.config import GatewayConfig

    overrides = list(override or [])
    if config is not None:
        from llmops.config import load_config

        settings = load_config(config, GatewayConfig, overrides)
    else:
        settings = validate_data(GatewayConfig, apply_overrides({}, overrides), "<command line>")
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if updates:
        settings = settings.model_copy(update=updates)
    served = ", ".join(settings.models) if settings.models else "every registered model"
    typer.echo(f"llmops gateway on http://{settings.host}:{settings.port}/v1 (serving {served})", err=True)
    # SIGTERM: stop accepting, let requests (streams included) finish for up to shutdown_timeout
    # seconds, then the app's shutdown flushes traces and captured traffic. No access log: requests
    # are counted in /metrics and traced; a log record per request is CPU on the hot path.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=settings.shutdown_timeout)


def register(root_app: typer.Typer) -> None:
    """Add `serve` to the root CLI."""
    root_app.command("serve")(serve)
