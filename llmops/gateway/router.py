"""Model versions -> engines: on which loaded weights a resolved version runs (in-process backend).

Base, merged and adapter versions alike; adapters share the engine of their base version (one copy
of the weights; peft mixes adapters in a batch). Which version a ref names is the resolver's job
(`resolver.py`); it calls `route(version)` when an alias moves, so the load happens before the switch.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["Route", "EngineRouter"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where one request goes: the version its ref resolved to, the engine, and the adapter name."""

    ref: str
    version: Any  # llmops.registry.ModelVersion
    engine: Any
    adapter: Optional[str]

    @property
    def labels(self) -> tuple[str, str]:
        """(model name, version number) for metrics."""
        return self.version.name, str(self.version.version)


def _adapter_name(version: Any) -> str:
    # peft keeps adapters in ModuleDicts, whose keys may not contain '.'.
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{version.name}-v{version.version}")


class EngineRouter:
    """Model versions -> loaded engines: one engine per base model version, adapters loaded into it.

    Args:
        engine_factory: `(source, revision) -> Engine`, called in a worker thread.
    """

    def __init__(self, engine_factory: Callable[[str, Optional[str]], Any]):
        self.engine_factory = engine_factory
        self._routes: dict[str, Route] = {}  # version ref -> route
        self._engines: dict[str, Any] = {}  # base version ref -> engine
        self._locks: dict[str, asyncio.Lock] = {}

    async def route(self, version: Any) -> Route:
        """The route of a resolved `ModelVersion`, loading its base engine and adapter on first use."""
        cached = self._routes.get(version.ref)
        if cached is not None:
            return cached
        async with self._lock(f"version:{version.ref}"):
            if version.ref not in self._routes:
                self._routes[version.ref] = await self._prepare(version)
        return self._routes[version.ref]

    async def _prepare(self, version: Any) -> Route:
        from llmops.registry import resolve_model_ref

        if version.kind == "adapter":
            base = await asyncio.to_thread(resolve_model_ref, version.base)
            engine = await self._engine_for(base)
            name = _adapter_name(version)
            path = await asyncio.to_thread(version.local_path)
            await engine.load_adapter(name, path)
            return Route(version.ref, version, engine, name)
        return Route(version.ref, version, await self._engine_for(version), None)

    async def _engine_for(self, base: Any) -> Any:
        async with self._lock(f"engine:{base.ref}"):
            if base.ref not in self._engines:
                local = base.source.startswith(("/", "file://")) or base.kind != "base"
                source = str(await asyncio.to_thread(base.local_path)) if local else base.source
                started = time.perf_counter()
                self._engines[base.ref] = await asyncio.to_thread(self.engine_factory, source, base.revision)
                _log.info("loaded %s from %s in %.1f s", base.ref, source, time.perf_counter() - started)
            return self._engines[base.ref]

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def close(self) -> None:
        """Close every engine."""
        for engine in self._engines.values():
            await engine.close()
        self._engines.clear()
        self._routes.clear()

    def engines(self) -> dict[str, Any]:
        """Loaded engines by base version ref."""
        return dict(self._engines)
