"""Shared printing helpers for the CLI: one console, key-value blocks, KEY=VALUE parsing."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from llmops.errors import LlmopsError

__all__ = ["console", "print_fields", "parse_assignments"]


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


class _LazyConsole:
    """Defers importing rich until something is printed (keeps `llmops --help` fast)."""

    _console = None

    def __getattr__(self, name: str) -> Any:
        if _LazyConsole._console is None:
            _LazyConsole._console = _console()
        return getattr(_LazyConsole._console, name)


console = _LazyConsole()


def print_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """Print aligned `key: value` lines, skipping empty values."""
    rows = [(k, v) for k, v in fields if v not in (None, "", (), [], {})]
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        if isinstance(value, Mapping):
            console.print(f"{key + ':':<{width + 1}}")
            for sub_key, sub_value in sorted(value.items()):
                console.print(f"  {sub_key} = {sub_value}", markup=False)
        else:
            console.print(f"[bold]{key + ':':<{width + 1}}[/bold] ", end="")
            console.print(str(value), markup=False)


def parse_assignments(items: Iterable[str], what: str = "variable") -> dict[str, str]:
    """Parse `KEY=VALUE` arguments into a dict (values stay strings).

    Raises:
        LlmopsError: an item has no `=` or an empty key.
    """
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LlmopsError(f"{what} {item!r}: expected KEY=VALUE")
        result[key.strip()] = value
    return result
