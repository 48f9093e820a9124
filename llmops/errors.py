"""The error types users see. Each domain raises its own subclass of `LlmopsError`.

The CLI prints `str(error)` as one line and exits non-zero; the gateway maps them to OpenAI's error
shape. Messages say what was wrong, where (file, key, line, field) and what to do.
"""

from __future__ import annotations

__all__ = [
    "LlmopsError",
    "ConfigError",
    "RegistryError",
    "NotFoundError",
    "PromptRenderError",
    "MissingExtraError",
]


class LlmopsError(Exception):
    """Base class of every error that is the user's to fix (bad input, missing file, unknown ref)."""


class ConfigError(LlmopsError):
    """A configuration file or override is invalid. `errors` lists every problem found."""

    def __init__(self, message: str, errors: list[str] | None = None):
        self.errors = errors or [message]
        super().__init__(message)


class RegistryError(LlmopsError):
    """A registry operation cannot be done (invalid name, alias on a missing version, ...)."""


class NotFoundError(RegistryError):
    """A model or prompt reference names nothing in the registry."""


class PromptRenderError(RegistryError):
    """A prompt cannot be rendered with the given variables (missing or unknown ones)."""

    def __init__(self, message: str, missing: list[str] | None = None, unknown: list[str] | None = None):
        self.missing = missing or []
        self.unknown = unknown or []
        super().__init__(message)


class MissingExtraError(LlmopsError):
    """An optional dependency is not installed; the message names the install command."""
