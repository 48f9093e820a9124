"""Registry refs -> engines: which model version a request runs on, and on which loaded weights.

`model` is `NAME@ALIAS`, `NAME/VERSION` or `NAME`, for base, merged and adapter versions alike.
Adapters share the engine of their base version (one copy of the weights; peft mixes adapters in a
batch). Resolutions are cached, so the hot path never touches the registry's SQLite; a background
task re-resolves every cached ref each `refresh_interval` seconds, loads what a moved alias now points
at, and only then swaps the cache entry. A request keeps the `Route` it started with, so it finishes
on that version even if the alias moves meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from llmops.errors import NotFoundError

__all__ = ["Route", "ModelRouter"]

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


class ModelRouter:
    """Resolves refs through the registry (cached) and keeps one engine per base model version.

    Args:
        engine_factory: `(source, revision) -> Engine`, called in a worker thread.
        allowed: Refs clients may request; None allows every registered model.
        refresh_interval: Seconds between background re-resolutions.
    """

    def __init__(self, engine_factory: Callable[[str, Optional[str]], Any], allowed: Optional[list[str]] = None,
                 refresh_interval: float = 5.0):
        self.engine_factory = engine_factory
        self.allowed = allowed
        self.refresh_interval = refresh_interval
        self._routes: dict[str, Route] = {}
        self._prompts: dict[str, Any] = {}
        self._engines: dict[str, Any] = {}  # base version ref -> engine
        self._locks: dict[str, asyncio.Lock] = {}
        self._listing: Optional[tuple[float, list]] = None
        self._task: Optional[asyncio.Task] = None

    # ----------------------------------------------------------------------------------- models

    async def route(self, ref: str) -> Route:
        """The route for `ref`, from the cache or resolved (and loaded) now.

        Raises:
            NotFoundError: the ref names no model version, or is not served by this gateway.
            RegistryError: the ref is malformed.
        """
        cached = self._routes.get(ref)
        if cached is not None:
            return cached
        if self.allowed is not None and ref not in self.allowed:
            raise NotFoundError(f"The model `{ref}` does not exist or is not served by this gateway "
                                f"(served: {', '.join(self.allowed)})")
        from llmops.registry import parse_ref, resolve_model_ref

        parse_ref(ref)  # a malformed ref is a 400, before any registry call or lock
        key = f"ref:{ref}"
        try:
            async with self._lock(key):
                if ref not in self._routes:
                    version = await asyncio.to_thread(resolve_model_ref, ref)
                    self._routes[ref] = await self._prepare(ref, version)
        finally:
            if ref not in self._routes:
                self._locks.pop(key, None)  # clients' unknown refs must not pile up locks
        return self._routes[ref]

    async def _prepare(self, ref: str, version: Any) -> Route:
        """Load what `version` needs (its base engine, its adapter) and return its route."""
        from llmops.registry import resolve_model_ref

        if version.kind == "adapter":
            base = await asyncio.to_thread(resolve_model_ref, version.base)
            engine = await self._engine_for(base)
            name = _adapter_name(version)
            path = await asyncio.to_thread(version.local_path)
            await engine.load_adapter(name, path)
            return Route(ref, version, engine, name)
        return Route(ref, version, await self._engine_for(version), None)

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

    async def list_models(self) -> list[tuple[str, Any]]:
        """(ref, resolved version) for each servable ref: the configured list, else every registered
        model by name and by each of its aliases. Cached for `refresh_interval` seconds."""
        if self._listing is not None and time.monotonic() - self._listing[0] < self.refresh_interval:
            return self._listing[1]
        listing = await asyncio.to_thread(self._list_models_sync)
        self._listing = (time.monotonic(), listing)
        return listing

    def _list_models_sync(self) -> list[tuple[str, Any]]:
        from llmops.registry import resolve_model_ref, search_models

        if self.allowed is not None:
            refs = list(self.allowed)
        else:
            refs = []
            for model in search_models():
                if model.latest_version is None:
                    continue
                refs.append(model.name)
                refs.extend(f"{model.name}@{alias}" for alias in sorted(model.aliases))
        listing, versions = [], {}
        for ref in refs:
            cached = self._routes.get(ref)
            try:
                version = cached.version if cached else resolve_model_ref(ref)
            except NotFoundError:
                continue
            listing.append((ref, versions.setdefault(version.ref, version)))
        return listing

    # ---------------------------------------------------------------------------------- prompts

    async def prompt(self, ref: str) -> Any:
        """The registry prompt `ref` (cached and refreshed like models).

        Raises:
            NotFoundError / RegistryError: unknown or malformed ref.
        """
        cached = self._prompts.get(ref)
        if cached is not None:
            return cached
        from llmops.registry import get_prompt, parse_ref

        parse_ref(ref)
        prompt = await asyncio.to_thread(get_prompt, ref)
        self._prompts[ref] = prompt
        return prompt

    # ---------------------------------------------------------------------------------- refresh

    async def preload(self) -> None:
        """Resolve and load every configured ref now (start-up)."""
        for ref in self.allowed or []:
            await self.route(ref)

    def start(self) -> None:
        """Start the background refresher."""
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception:  # keep serving the cached versions; try again next interval
                _log.exception("registry refresh failed")

    async def refresh(self) -> None:
        """Re-resolve every cached model and prompt ref; load and switch to versions that moved."""
        from llmops.registry import get_prompt, resolve_model_ref

        for ref, route in list(self._routes.items()):
            try:
                version = await asyncio.to_thread(resolve_model_ref, ref)
            except NotFoundError:
                self._routes.pop(ref, None)  # deleted: the next request gets a clear 404
                continue
            if version.ref != route.version.ref:
                self._routes[ref] = await self._prepare(ref, version)
                _log.info("%s moved: %s -> %s", ref, route.version.ref, version.ref)
        for ref, prompt in list(self._prompts.items()):
            try:
                new = await asyncio.to_thread(get_prompt, ref)
            except NotFoundError:
                self._prompts.pop(ref, None)
                continue
            if new.ref != prompt.ref:
                self._prompts[ref] = new
        self._listing = None

    async def close(self) -> None:
        """Stop refreshing and close every engine."""
        if self._task is not None:
            self._task.cancel()
        for engine in self._engines.values():
            await engine.close()
        self._engines.clear()

    def engines(self) -> dict[str, Any]:
        """Loaded engines by base version ref."""
        return dict(self._engines)
