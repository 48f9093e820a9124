"""Registry references: `name` (latest version), `name@alias`, `name/VERSION`.

The same grammar serves models and prompts; MLflow's `models:/…` and `prompts:/…` URIs are
accepted with their scheme.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmops.errors import RegistryError

__all__ = ["Ref", "parse_ref", "check_name", "check_alias"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# MLflow reserves `latest` and `v<digits>` for its own meaning of versions.
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Ref:
    """A parsed reference. Exactly one of `version` and `alias` is set, or neither (= latest)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a valid registry name, else raise RegistryError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return name


def check_alias(alias: str) -> str:
    """Return `alias` if it is a valid, non-reserved alias, else raise RegistryError."""
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise RegistryError(f"invalid alias {alias!r}: use letters, digits, '_' or '-' (starting with a letter)")
    if _RESERVED_ALIAS.match(alias):
        raise RegistryError(f"alias {alias!r} is reserved; choose another name")
    return alias


def parse_ref(text: str) -> Ref:
    """Parse `name`, `name@alias` or `name/VERSION` (optionally prefixed `models:/` or `prompts:/`).

    Raises:
        RegistryError: the text is not a valid reference.
    """
    if not isinstance(text, str) or not text.strip():
        raise RegistryError("empty reference: expected NAME, NAME@ALIAS or NAME/VERSION")
    raw = text.strip()
    for scheme in ("models:/", "prompts:/"):
        raw = raw.removeprefix(scheme)
    if "@" in raw:
        name, _, alias = raw.partition("@")
        return Ref(check_name(name), alias=check_alias(alias))
    if "/" in raw:
        name, _, version = raw.rpartition("/")
        if not version.isdigit() or int(version) < 1:
            raise RegistryError(f"invalid reference {text!r}: the version after '/' must be a positive integer")
        return Ref(check_name(name), version=int(version))
    return Ref(check_name(raw))
