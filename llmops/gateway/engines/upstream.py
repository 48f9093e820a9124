"""The `upstream` engine: a fleet of OpenAI-compatible servers (`vllm serve --enable-lora` replicas).

Unlike the in-process engines this one does not tokenize: the gateway forwards the client's JSON
(with `model` rewritten to the resolved registry version) to one replica and passes the answer
through byte for byte (`llmops.gateway.proxy`). This module holds the fleet:

- a replica is chosen least-busy (fewest requests in flight, ties round-robin) or round-robin;
- a generation is retried on another replica (exponential backoff) only when no byte of it reached
  the first one: the connection could not be opened, or an adapter load before it failed. Once the
  request was written, a failure is the client's 502, never a replay: a request that crashes a
  replica must not crash the others too;
- a replica that fails a request or a health check (`GET /health`) is taken out of rotation and put
  back when its health check passes again (its loaded adapters are then forgotten: a restarted vLLM
  has none);
- adapters reach replicas by ref (`NAME/VERSION`), once per replica: files on a shared path through
  vLLM's `POST /v1/load_lora_adapter`, files in a remote artifact store through the llmops LoRA
  resolver plugin that the replica runs (`_load_adapter`). Launch vLLM with
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and the base model served under its registry ref
  (`--served-model-name tiny/1`), or map it with `served_model_names`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from llmops.config import ConfigModel
from llmops.gateway.engines.http_client import HttpConnectError
from llmops.gateway.errors import GatewayError

__all__ = ["UpstreamConfig", "Replica", "ReplicaPool", "UpstreamReply"]

_log = logging.getLogger(__name__)


def _vllm_error(text: str) -> Optional[dict]:
    """vLLM's error body, `{"error": {"message", "type", "code"}}` (older: the same keys at the top
    level, `"object": "error"`); None for anything else, such as FastAPI's `{"detail": "Not Found"}`."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("error"), dict) and "type" in body["error"]:
        return body["error"]
    if body.get("object") == "error" and "type" in body:
        return body
    return None


class UpstreamConfig(ConfigModel):
    """The OpenAI-compatible servers behind the gateway (`engine.kind: upstream`)."""

    urls: list[str] = Field(min_length=1)
    """Base URLs of the replicas, without `/v1` (`http://10.0.0.5:8000`; plain HTTP only)."""
    strategy: Literal["least_busy", "round_robin"] = "least_busy"
    """How a replica is chosen: fewest requests in flight, or in turn."""
    retries: int = Field(2, ge=0, le=10)
    """Extra attempts on other replicas when no byte of the request reached the first one (it could
    not connect, or could not load the adapter)."""
    retry_backoff: float = Field(0.05, ge=0.0, le=10.0)
    """Seconds before the first retry; doubled for each further one."""
    connect_timeout: float = Field(5.0, gt=0.0)
    """Seconds to open a connection to a replica."""
    timeout: float = Field(300.0, gt=0.0)
    """Seconds a replica may take to answer (between bytes, for streams)."""
    health_interval: float = Field(5.0, gt=0.0)
    """Seconds between health checks of every replica."""
    health_timeout: float = Field(2.0, gt=0.0)
    """Seconds a health check may take before it counts as failed."""
    health_path: str = "/health"
    """Path of the replicas' health endpoint."""
    max_connections: int = Field(512, ge=1)
    """Connections kept open to each replica (pooled, keep-alive)."""
    api_key_env: Optional[str] = None
    """Name of an environment variable holding the replicas' API key (`vllm serve --api-key`)."""
    served_model_names: dict[str, str] = {}
    """Registry version ref -> the name a replica serves it under; default: the ref itself."""

    @field_validator("urls")
    @classmethod
    def _http(cls, urls: list[str]) -> list[str]:
        cleaned = []
        for url in urls:
            if not url.startswith("http://"):
                raise ValueError(f"{url!r} must start with http:// (the gateway's upstream client speaks plain "
                                 "HTTP/1.1; keep replicas on a private network or terminate TLS beside them)")
            url = url.rstrip("/")
            cleaned.append(url[:-3] if url.endswith("/v1") else url)
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("each upstream URL may be listed once")
        return cleaned


@dataclass(eq=False)
class Replica:
    """One upstream server and what the gateway knows about it."""

    url: str
    healthy: bool = True
    in_flight: int = 0
    served: int = 0
    failures: int = 0
    adapters: set = field(default_factory=set)
    locks: dict = field(default_factory=dict)


@dataclass
class UpstreamReply:
    """An answer from a replica: for `stream`, `response` is still open and must be released."""

    replica: Replica
    status: int
    headers: Any
    body: bytes = b""
    response: Any = None


class ReplicaPool:
    """Chooses replicas, retries, checks health and loads adapters. Start with `start()` in the loop."""

    def __init__(self, config: UpstreamConfig):
        self.config = config
        self.replicas = [Replica(url) for url in config.urls]
        self._turn = itertools.count()
        self._client: Any = None
        self._health_task: Optional[asyncio.Task] = None
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._headers = {"content-type": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"

    async def start(self) -> None:
        """Open the connection pool and start health checks."""
        from llmops.gateway.engines.http_client import HttpClient

        self._client = HttpClient(self.config.connect_timeout, self.config.max_connections)
        self._health_task = asyncio.get_running_loop().create_task(self._check_forever())

    async def close(self) -> None:
        """Stop health checks and close every connection."""
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._client is not None:
            self._client.close()

    # -------------------------------------------------------------------------------- choosing

    def pick(self, exclude: tuple = ()) -> Replica:
        """The replica for the next attempt; a replica marked down is used only when all are."""
        candidates = [r for r in self.replicas if r.healthy and r not in exclude]
        if not candidates:
            candidates = [r for r in self.replicas if r not in exclude]
        if not candidates:
            raise GatewayError(503, "no upstream replica is available", code="upstream_unavailable")
        turn = next(self._turn)
        if self.config.strategy == "round_robin" or len(candidates) == 1:
            return candidates[turn % len(candidates)]
        least = min(r.in_flight for r in candidates)
        tied = [r for r in candidates if r.in_flight == least]
        return tied[turn % len(tied)]

    def mark_down(self, replica: Replica, reason: str) -> None:
        """Take `replica` out of rotation until a health check passes."""
        replica.failures += 1
        if replica.healthy:
            replica.healthy = False
            _log.warning("upstream %s taken out of rotation: %s", replica.url, reason)

    # ------------------------------------------------------------------------------- requesting

    async def send(self, path: str, body: bytes, stream: bool, adapter: Optional[tuple[str, str]] = None,
                   request_id: str = "") -> UpstreamReply:
        """POST `body` to `path` on a replica; another replica only while nothing of it was sent.

        For `stream`, returns as soon as the replica answered (status and headers), with the response
        open (`release(reply)` when done); otherwise with the whole body read.

        Raises:
            GatewayError: 502 when the replica failed after receiving the request, or when no replica
                could be reached within `retries` extra attempts.
        """
        headers = dict(self._headers)
        if request_id:
            headers["x-request-id"] = request_id
        tried: list[Replica] = []
        last_error = "no attempt"
        timeout = self.config.timeout
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
            replica = self.pick(tuple(tried) if len(tried) < len(self.replicas) else ())
            tried.append(replica)
            replica.in_flight += 1
            response = None
            try:
                if adapter is not None and adapter[0] not in replica.adapters:
                    try:
                        await self._load_adapter(replica, *adapter)
                    except (OSError, asyncio.TimeoutError) as error:  # the generation itself was not sent
                        raise HttpConnectError(f"loading adapter {adapter[0]}: {error}") from None
                response = await self._client.request("POST", replica.url, path, body, headers, timeout)
                if response.status >= 500:
                    data = (await response.read(timeout)).decode("utf-8", "replace")
                    response.release()
                    _log.warning("request %s: %s answered %d: %s", request_id, replica.url, response.status,
                                 data[:300])
                    raise GatewayError(502, f"the upstream server answered {response.status}", code="upstream_error")
                if stream:
                    return UpstreamReply(replica, response.status, response.headers, response=response)
                data = await response.read(timeout)
                response.release()
                replica.in_flight -= 1
                replica.served += 1
                return UpstreamReply(replica, response.status, response.headers, data)
            except HttpConnectError as error:  # nothing reached the replica: try another one
                last_error = f"{replica.url}: {error}"
                self.mark_down(replica, last_error)
                replica.in_flight -= 1
            except (OSError, asyncio.TimeoutError) as error:  # sent: the replica may have acted on it
                replica.in_flight -= 1
                if response is not None:
                    response.close()
                self.mark_down(replica, f"{type(error).__name__}: {error}")
                _log.warning("request %s: %s failed after the request was sent: %s", request_id, replica.url, error)
                raise GatewayError(502, "the upstream server failed while answering", code="upstream_error") \
                    from None
            except GatewayError:
                replica.in_flight -= 1
                raise
            except BaseException:
                replica.in_flight -= 1
                if response is not None:
                    response.close()
                raise
        _log.warning("request %s: no upstream replica reachable (%s)", request_id, last_error)
        raise GatewayError(502, "no upstream server could be reached", code="upstream_error")

    def release(self, reply: UpstreamReply, failed: bool = False, closed: bool = False) -> None:
        """Give back a streamed reply's connection: closed when the stream broke (`failed`, which also
        takes the replica out) or the client went away (`closed`, which aborts the generation)."""
        reply.replica.in_flight -= 1
        if failed or closed:
            reply.response.close()
            if failed:
                self.mark_down(reply.replica, "the stream broke off")
        else:
            reply.replica.served += 1
            reply.response.release()

    async def _load_adapter(self, replica: Replica, name: str, path: str) -> None:
        """Make `name` (`NAME/VERSION`) loadable on `replica`, once per replica.

        vLLM's `/v1/load_lora_adapter` takes only a path the replica can read. An adapter in a remote
        artifact store (`mlflow-artifacts:/…`, `s3://…`) is resolved by the replica's llmops LoRA
        resolver (`llmops.registry.vllm_resolver`), which vLLM asks when a request names a model it does
        not know; a one-token completion triggers it here, so that the outcome is read once, as vLLM's
        `resolve_lora` defines it: 200 (or any answer past the model check) loaded; 404 `NotFoundError`
        no resolver found it; 400 `… was found but could not be loaded.`; both 502 `adapter_load_failed`.
        A local or shared path is loaded through `/v1/load_lora_adapter`, and the answer read as vLLM
        defines it (vllm/entrypoints/openai/models/serving.py, vllm/entrypoints/serve/lora/api_router.py):

        - 200 `Success: …`: loaded; 400 `… has already been loaded …`: loaded too, not an error;
        - 404 `Loading lora X failed: No adapter found for PATH` (vllm/exceptions.py
          LoRAAdapterNotFoundError): the replica cannot read the files: 502 `adapter_load_failed`;
        - any other 404 (FastAPI's `{"detail":"Not Found"}`, an OpenAI-compatible server without the
          route): runtime loading is off there: the request goes as is, for adapters given by
          `--lora-modules` or a resolver;
        - any other answer (a 500 from a failed load): 502 `adapter_load_failed`.

        A failed load is the adapter's fault, not the replica's: it stays in rotation.
        """
        lock = replica.locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in replica.adapters:
                return
            if "://" in path and not path.startswith("file://") or path.startswith("mlflow-artifacts:"):
                await self._resolve_on_replica(replica, name, path)
                replica.adapters.add(name)
                return
            payload = json.dumps({"lora_name": name, "lora_path": path.removeprefix("file://")}).encode()
            response = await self._client.request("POST", replica.url, "/v1/load_lora_adapter", payload,
                                                  self._headers, self.config.timeout)
            text = (await response.read(self.config.timeout)).decode("utf-8", "replace")
            response.release()
            status = response.status
            error = _vllm_error(text)
            if status == 200 or (status == 400 and "has already been loaded" in text):
                replica.adapters.add(name)
                _log.info("loaded adapter %s on %s", name, replica.url)
                return
            message = (error or {}).get("message") or text[:300]
            if status == 404 and "No adapter found" not in message:
                _log.info("upstream %s has no /v1/load_lora_adapter (runtime LoRA loading off); sending %s as is",
                          replica.url, name)
                replica.adapters.add(name)
                return
            if status == 404:
                raise GatewayError(502, f"upstream {replica.url} cannot find the files of adapter {name} at {path}: "
                                   f"{message} (give replicas that path on a shared file system, or use an "
                                   "artifact store and the llmops vLLM resolver)", code="adapter_load_failed")
            raise GatewayError(502, f"upstream {replica.url} could not load adapter {name} ({status}): {message}",
                               code="adapter_load_failed")

    async def _resolve_on_replica(self, replica: Replica, name: str, path: str) -> None:
        """Have the replica's LoRA resolvers load `name` (see `_load_adapter`); raise on failure."""
        payload = json.dumps({"model": name, "prompt": "hi", "max_tokens": 1}).encode()
        response = await self._client.request("POST", replica.url, "/v1/completions", payload,
                                              self._headers, self.config.timeout)
        text = (await response.read(self.config.timeout)).decode("utf-8", "replace")
        response.release()
        error = _vllm_error(text) or {}
        message = error.get("message") or text[:300]
        if response.status == 404 and error.get("type") == "NotFoundError":
            raise GatewayError(502, f"upstream {replica.url} cannot resolve adapter {name} (files in {path}): {message} "
                               "(run the replica with llmops installed, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and "
                               "MLFLOW_TRACKING_URI; see README \"Team set-up\")", code="adapter_load_failed")
        if response.status >= 500 or (response.status == 400 and "could not be loaded" in message):
            raise GatewayError(502, f"upstream {replica.url} could not load adapter {name} ({response.status}): "
                               f"{message}", code="adapter_load_failed")
        _log.info("adapter %s resolved on %s from %s", name, replica.url, path)

    # ---------------------------------------------------------------------------------- health

    async def check(self) -> None:
        """Check every replica once: failing ones go out, passing ones come back."""
        await asyncio.gather(*(self._check_one(r) for r in self.replicas))

    async def _check_one(self, replica: Replica) -> None:
        response = None
        try:
            response = await self._client.request("GET", replica.url, self.config.health_path, b"",
                                                  self._headers, self.config.health_timeout)
            await response.read(self.config.health_timeout)
            ok = response.status == 200
            response.release()
        except (OSError, asyncio.TimeoutError):
            ok = False
            if response is not None:
                response.close()
        if ok and not replica.healthy:
            replica.adapters.clear()  # it may have restarted without them
            replica.healthy = True
            _log.warning("upstream %s is healthy again", replica.url)
        elif not ok:
            self.mark_down(replica, "health check failed")

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            try:
                await self.check()
            except Exception:  # pragma: no cover - keep checking
                _log.exception("upstream health check failed")

    def stats(self) -> dict[str, Any]:
        """Per-replica state, for `/health`."""
        return {r.url: {"healthy": r.healthy, "in_flight": r.in_flight, "served": r.served,
                        "failures": r.failures, "adapters": sorted(r.adapters)} for r in self.replicas}
