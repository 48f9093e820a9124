"""API keys: SHA-256 hashes in the config, each scoped to model-name patterns.

    auth:
      enabled: true
      metrics_require_key: false
      keys:
        - id: team-search                    # shows in logs, metrics, traces and captured traffic
          sha256: 9f86d081884c7d65...        # `llmops keys hash` prints a new key and its hash
          models: ["capitals@*", "tiny/*"]   # fnmatch patterns over the requested model ref
          prompts: ["capitals-*"]            # fnmatch patterns over registry prompt refs (`prompt`)
          requests_per_minute: 600
          tokens_per_minute: 200000

The gateway never sees a plain key after hashing the `Authorization: Bearer` header, and only the
key's `id` travels further (logs, traces, capture). A missing or unknown key is a 401; a model or a
registry prompt outside the key's patterns is a 403 (and `/v1/models` lists only the key's models),
all in OpenAI's error shape.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from typing import Optional

from pydantic import Field, field_validator, model_validator

from llmops.config import ConfigModel
from llmops.gateway.errors import GatewayError

__all__ = ["ApiKeyConfig", "AuthConfig", "KeyChecker", "fnmatch_any", "hash_key", "new_key"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of an API key, as stored in the gateway config."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def fnmatch_any(name: str, patterns: list[str]) -> bool:
    """True when `name` matches one of the fnmatch `patterns` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def new_key(prefix: str = "sk-llmops-") -> str:
    """A fresh random API key (256 bits from `secrets`)."""
    return prefix + secrets.token_urlsafe(32)


class ApiKeyConfig(ConfigModel):
    """One API key: its hash, what it may call, how fast."""

    id: str = Field(min_length=1, max_length=64)
    """A name for the key (never the key itself): shown in logs, traces, metrics and captured traffic."""
    sha256: str
    """SHA-256 hex digest of the key (`llmops keys hash` prints a new key and this digest)."""
    models: list[str] = ["*"]
    """fnmatch patterns over the requested model ref (`capitals@*`, `tiny/*`, `*`)."""
    prompts: list[str] = ["*"]
    """fnmatch patterns over the registry prompt refs the key may render (`capitals-qa@*`); the
    pattern `capitals-qa*` also matches `capitals-qa/3`. `[]`: no registry prompts."""
    requests_per_minute: Optional[int] = Field(None, ge=1)
    """Most requests per minute (a token bucket: bursts up to this many); None: unlimited."""
    tokens_per_minute: Optional[int] = Field(None, ge=1)
    """Most prompt + completion tokens per minute; None: unlimited."""

    @field_validator("sha256")
    @classmethod
    def _is_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEX64.match(value):
            raise ValueError("sha256 must be 64 hex digits (the hash of the key, never the key itself): "
                             "run `llmops keys hash`")
        return value


class AuthConfig(ConfigModel):
    """Who may call the gateway."""

    enabled: bool = False
    """Require `Authorization: Bearer KEY` on the API routes (`/health` stays open)."""
    metrics_require_key: bool = False
    """Also require a key (any configured key) for `/metrics`."""
    keys: list[ApiKeyConfig] = []
    """The accepted keys."""
    rate_limit_store: Optional[str] = None
    """Where rate limits live: unset keeps them per gateway process; `redis://HOST:PORT/DB` makes every
    gateway pointing at that Redis share one budget per key (see "Shared rate limits" in the README)."""

    @field_validator("rate_limit_store")
    @classmethod
    def _is_redis_url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("rate_limit_store must be a Redis URL: redis://HOST:PORT/DB (or rediss://, unix://)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> "AuthConfig":
        if self.enabled and not self.keys:
            raise ValueError("auth.keys: auth is enabled but no key is configured")
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("auth.keys: each id may be used once")
        hashes = [k.sha256 for k in self.keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("auth.keys: two keys have the same sha256")
        return self


class KeyChecker:
    """Authenticates a request's `Authorization` header and checks a key's model scope.

    Scope answers are cached per (key, model) so the hot path is two dict lookups; the cache is
    bounded because model names come from clients.
    """

    def __init__(self, config: AuthConfig):
        self.enabled = config.enabled
        self.metrics_require_key = config.metrics_require_key
        self._by_hash = {k.sha256: k for k in config.keys}
        self._scopes: dict[tuple[str, str, str], bool] = {}

    def authenticate(self, authorization: Optional[str]) -> Optional[ApiKeyConfig]:
        """The key presented in an `Authorization` header value; None when auth is disabled.

        Raises:
            GatewayError: 401 when the header is missing, malformed or names no configured key.
        """
        if not self.enabled:
            return None
        if not authorization:
            raise GatewayError(401, "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
                               code="missing_api_key")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(401, "The Authorization header must be `Bearer KEY`.", code="invalid_api_key")
        key = self._by_hash.get(hash_key(token))
        if key is None:
            raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")
        return key

    def allows_model(self, key: Optional[ApiKeyConfig], model: str) -> bool:
        """True when `key` (None: auth off) may call `model`."""
        return key is None or self._allowed(key, "models", model)

    def check_scope(self, key: Optional[ApiKeyConfig], model: str) -> None:
        """Raise a 403 GatewayError when `key` may not call `model` (no-op for None)."""
        if key is not None and not self._allowed(key, "models", model):
            raise GatewayError(403, f"The API key {key.id!r} may not call the model `{model}`.", param="model",
                               code="model_not_allowed")

    def check_prompt_scope(self, key: Optional[ApiKeyConfig], prompt: str) -> None:
        """Raise a 403 GatewayError when `key` may not render the registry prompt `prompt`."""
        if key is not None and not self._allowed(key, "prompts", prompt):
            raise GatewayError(403, f"The API key {key.id!r} may not use the registry prompt `{prompt}`.",
                               param="prompt", code="prompt_not_allowed")

    def _allowed(self, key: ApiKeyConfig, kind: str, ref: str) -> bool:
        cache_key = (key.id, kind, ref)
        allowed = self._scopes.get(cache_key)
        if allowed is None:
            allowed = fnmatch_any(ref, getattr(key, kind))
            if len(self._scopes) > 100_000:  # refs come from clients: keep the cache bounded
                self._scopes.clear()
            self._scopes[cache_key] = allowed
        return allowed
