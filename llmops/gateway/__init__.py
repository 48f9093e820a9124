"""The inference gateway: an OpenAI-compatible API over registry models and prompts.

`create_app(config)` builds the app (one request pipeline over in-process engines or an upstream
fleet) with a public `lifespan()`; `llmops serve` runs it under uvicorn. Importing this package is
cheap: torch and MLflow load when the app starts.
"""

from __future__ import annotations

from typing import Any

from llmops.gateway.config import GatewayConfig

__all__ = ["GatewayConfig", "create_app"]


def create_app(config: GatewayConfig | None = None) -> Any:
    """The gateway's ASGI app, a `llmops.gateway.app.GatewayApp` (see `llmops.gateway.app.create_app`)."""
    from llmops.gateway.app import create_app as _create_app

    return _create_app(config)
