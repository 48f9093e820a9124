"""Registry refs -> model versions and prompt versions: one cache for both backends.

Entries are keyed by the parsed ref (`llmops.registry.refs.Ref`), so `tiny@production` and
`models:/tiny@production` share one entry and a malformed ref is a 400 before any registry call. The
hot path is two dict lookups; only a ref seen for the first time goes to the registry (in a worker
thread, one lookup per ref however many requests wait for it). A background task re-resolves every
cached ref each `refresh_interval` seconds (a ref whose alias still names its version costs one
registry read, not two); when a model alias moved, `on_move(version)` (the
backend loading what the new version needs) runs first, and only then is the entry swapped, so no
request waits for a load. A request keeps the version it resolved, even if the alias moves meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional

from llmops.errors import NotFoundError
from llmops.gateway.errors import GatewayError, from_exception

__all__ = ["RegistryResolver"]

_log = logging.getLogger(__name__)
_MAX_PARSED = 10_000


class RegistryResolver:
    """Cached resolution of model and prompt refs.

    Args:
        allowed: Model refs clients may request (None: every registered model).
        refresh_interval: Seconds between re-resolutions of cached refs.
        on_move: Awaited with a model version before a cached ref switches to it (and on first use).
    """

    def __init__(self, allowed: Optional[list[str]] = None, refresh_interval: float = 5.0,
                 on_move: Optional[Callable[[Any], Awaitable[None]]] = None):
        from llmops.registry.refs import parse_ref

        self.allowed = allowed
        self._allowed_refs = None if allowed is None else {parse_ref(ref) for ref in allowed}
        self.refresh_interval = refresh_interval
        self.on_move = on_move
        self._parsed: dict[str, Any] = {}
        self._models: dict[Any, Any] = {}
        self._prompts: dict[Any, Any] = {}
        self._locks: dict[Any, asyncio.Lock] = {}
        self._listing: Optional[tuple[float, list]] = None
        self._task: Optional[asyncio.Task] = None

    def _parse(self, ref: str, param: str) -> Any:
        parsed = self._parsed.get(ref)
        if parsed is None:
            from llmops.registry.refs import parse_ref

            try:
                parsed = parse_ref(ref)
            except Exception as error:
                raise from_exception(error, param=param) from None
            if len(self._parsed) >= _MAX_PARSED:  # refs come from clients: keep the cache bounded
                self._parsed.clear()
            self._parsed[ref] = parsed
        return parsed

    async def model(self, ref: str) -> Any:
        """The `ModelVersion` `ref` resolves to (its backend ready for it).

        Raises:
            GatewayError: 400 malformed ref, 404 unknown or not served by this gateway.
        """
        parsed = self._parse(ref, "model")
        version = self._models.get(parsed)
        if version is not None:
            return version
        if self._allowed_refs is not None and parsed not in self._allowed_refs:
            raise GatewayError(404, f"The model `{ref}` does not exist or is not served by this gateway "
                               f"(served: {', '.join(self.allowed or [])})", param="model", code="model_not_found")
        return await self._load(self._models, parsed, "model")

    async def prompt(self, ref: str) -> Any:
        """The registry `Prompt` `ref` resolves to. Raises GatewayError 400 / 404 (`param: prompt`)."""
        parsed = self._parse(ref, "prompt")
        prompt = self._prompts.get(parsed)
        if prompt is not None:
            return prompt
        return await self._load(self._prompts, parsed, "prompt")

    async def _load(self, cache: dict, parsed: Any, kind: str) -> Any:
        lock = self._locks.setdefault((kind, parsed), asyncio.Lock())
        try:
            async with lock:
                if parsed not in cache:
                    try:
                        value = await asyncio.to_thread(self._lookup, kind, parsed)
                        if kind == "model" and self.on_move is not None:
                            await self.on_move(value)
                    except GatewayError:
                        raise
                    except Exception as error:
                        raise from_exception(error, param=kind) from None
                    cache[parsed] = value
        finally:
            if parsed not in cache:
                self._locks.pop((kind, parsed), None)  # clients' unknown refs must not pile up locks
        return cache[parsed]

    @staticmethod
    def _lookup(kind: str, parsed: Any, known: Any = None) -> Any:
        from llmops.registry import get_prompt, resolve_model_ref

        return resolve_model_ref(parsed, known) if kind == "model" else get_prompt(parsed)

    # ---------------------------------------------------------------------------------- listing

    async def list_models(self) -> list[tuple[str, Any]]:
        """(ref, version) for each servable ref: the configured list, else every registered model by
        name and by each alias. Cached for `refresh_interval` seconds."""
        if self._listing is not None and time.monotonic() - self._listing[0] < self.refresh_interval:
            return self._listing[1]
        listing = await asyncio.to_thread(self._list_sync)
        self._listing = (time.monotonic(), listing)
        return listing

    def _list_sync(self) -> list[tuple[str, Any]]:
        from llmops.registry import resolve_model_ref, search_models
        from llmops.registry.refs import parse_ref

        if self.allowed is not None:
            refs = list(self.allowed)
        else:
            refs = []
            for model in search_models():
                if model.latest_version is not None:
                    refs.append(model.name)
                    refs.extend(f"{model.name}@{alias}" for alias in sorted(model.aliases))
        listing = []
        for ref in refs:
            try:
                listing.append((ref, self._models.get(parse_ref(ref)) or resolve_model_ref(ref)))
            except NotFoundError:
                continue
        return listing

    # ---------------------------------------------------------------------------------- refresh

    def start(self) -> None:
        """Start re-resolving cached refs in the background."""
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception:  # keep serving the cached versions; try again next interval
                _log.exception("registry refresh failed")

    async def refresh(self) -> None:
        """Re-resolve every cached ref; prepare and switch to model versions that moved."""
        for kind, cache in (("model", self._models), ("prompt", self._prompts)):
            for parsed, old in list(cache.items()):
                try:
                    new = await asyncio.to_thread(self._lookup, kind, parsed, old)
                except NotFoundError:
                    cache.pop(parsed, None)  # deleted: the next request gets a clear 404
                    continue
                if new.ref == old.ref:
                    continue
                if kind == "model" and self.on_move is not None:
                    await self.on_move(new)
                cache[parsed] = new
                _log.info("%s moved: %s -> %s", parsed, old.ref, new.ref)
        self._listing = None

    async def close(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
