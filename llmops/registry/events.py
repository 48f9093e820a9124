"""Alias-move events: who moved which alias from which version to which, when, why, on what evidence.

MLflow keeps no alias history (mlflow/mlflow#2169), so each move is also written as a tag on the
registered model (or prompt): `llmops.alias_event.<ns timestamp>` = JSON. Tags sort by key, which
orders the events oldest first.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

__all__ = ["AliasEvent", "EVENT_TAG_PREFIX", "new_event", "event_tag", "events_from_tags"]

EVENT_TAG_PREFIX = "llmops.alias_event."
_MAX_TAG_VALUE = 4800  # stay under the smallest tag-value limit MLflow stores allow (5,000)


@dataclass(frozen=True)
class AliasEvent:
    """One alias move. `from_version` is None when the alias was new."""

    name: str
    alias: str
    from_version: int | None
    to_version: int
    time: str
    user: str
    reason: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One human line: `2026-11-27T07:30:00Z  staging: (none) -> 1  by ana  (reason)`."""
        before = "(none)" if self.from_version is None else str(self.from_version)
        reason = f"  ({self.reason})" if self.reason else ""
        return f"{self.time}  {self.alias}: {before} -> {self.to_version}  by {self.user}{reason}"


def _current_user() -> str:
    try:
        return os.environ.get("LLMOPS_USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def new_event(
    name: str,
    alias: str,
    from_version: int | None,
    to_version: int,
    reason: str | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> AliasEvent:
    """An event stamped with the current UTC time and user (`LLMOPS_USER` overrides the login name)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return AliasEvent(name, alias, from_version, to_version, now, _current_user(), reason, dict(evidence or {}))


def event_tag(event: AliasEvent) -> tuple[str, str]:
    """The (key, value) tag that records `event`; evidence is trimmed to fit a tag value."""
    payload = asdict(event)
    value = json.dumps(payload, sort_keys=True)
    if len(value) > _MAX_TAG_VALUE:
        payload["evidence"] = {"truncated": True, "keys": sorted(event.evidence)[:50]}
        value = json.dumps(payload, sort_keys=True)
    return f"{EVENT_TAG_PREFIX}{time.time_ns():020d}", value


def events_from_tags(tags: Mapping[str, str]) -> list[AliasEvent]:
    """Decode the events recorded in a registered model's tags, oldest first."""
    events = []
    for key in sorted(k for k in tags if k.startswith(EVENT_TAG_PREFIX)):
        try:
            events.append(AliasEvent(**json.loads(tags[key])))
        except (ValueError, TypeError):
            continue  # a hand-edited tag must not break history for everyone
    return events
