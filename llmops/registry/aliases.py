"""Alias moves for models and prompts: compare-and-swap, recorded, never half done.

MLflow has no compare-and-swap on aliases and keeps no alias history, so one transaction does both:

1. **Lock** `name@alias` by creating the registered model `llmops-lock.<name>.<alias>`. Names are
   unique in every MLflow store (SQLite, PostgreSQL, a tracking server), so exactly one process, on
   any machine, creates it; the others wait. A lock older than `LOCK_TTL_S` (its holder was killed)
   is broken.
2. **Compare**: when the caller names the version it expects the alias to hold (`expected`), a
   different holder aborts with `AliasConflictError` naming it.
3. **Intent**: the event is written as the tag `llmops.alias_pending.<alias>.<event time>` before
   anything moves (the event tag it will become is `llmops.alias_event.<event time>`).
4. **Swap** the alias, **record** the event tag (`events.py`), drop the intent, release the lock.

After a SIGKILL between 3 and 4 the intent tag remains; the next read of the alias (`repair`) finds
it and either records the event (the alias did move) or drops the intent (it did not), or reports
the mismatch when the alias moved elsewhere.

Models and prompts differ only in the MLflow calls (`AliasOps`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from llmops.errors import RegistryError
from llmops.registry import events as _events
from llmops.registry.store import retry_locked, upsert_tag

__all__ = ["AliasOps", "AliasConflictError", "move_alias", "repair", "LOCK_PREFIX", "PENDING_PREFIX"]

_log = logging.getLogger(__name__)
LOCK_PREFIX = "llmops-lock."
PENDING_PREFIX = "llmops.alias_pending."
LOCK_TTL_S = 60.0
LOCK_WAIT_S = 120.0


class AliasConflictError(RegistryError):
    """The alias no longer points where the caller compared against; `holder` is where it points now."""

    def __init__(self, message: str, holder: Optional[int]):
        self.holder = holder
        super().__init__(message)


@dataclass(frozen=True)
class AliasOps:
    """The MLflow calls for one kind of registry entry (models or prompts)."""

    kind: str
    get_tags: Callable[[str], Mapping[str, str]]
    set_tag: Callable[[str, str, str], Any]
    delete_tag: Callable[[str, str], Any]
    get_alias: Callable[[str, str], Optional[int]]
    set_alias: Callable[[str, str, int], Any]
    delete_alias: Callable[[str, str], Any]


def _lock_name(name: str, alias: str) -> str:
    return f"{LOCK_PREFIX}{name}.{alias}"


def _try_lock(client: Any, lock: str) -> bool:
    from mlflow.exceptions import MlflowException

    # Owner and time go in the description: one row, one INSERT, so a concurrent create fails on the
    # name's primary key (tags are a second INSERT that PostgreSQL may reject only at commit).
    holder = json.dumps({"owner": f"{socket.gethostname()}:{os.getpid()}", "time": time.time()})
    try:
        retry_locked(client.create_registered_model)(lock, description=holder)
        return True
    except Exception as error:
        try:
            held = client.get_registered_model(lock)
        except MlflowException:
            if isinstance(error, MlflowException) and "already exists" in str(error).lower():
                return False  # released between the two calls: try again
            raise error from None
    # Held: break it when its holder is gone (killed on this host, or silent for longer than any
    # transaction takes).
    if _is_stale(held):
        _log.warning("breaking the stale alias lock %s (held by %s)", lock, _holder(held).get("owner"))
        _unlock(client, lock)
    return False


def _holder(lock_model: Any) -> dict:
    try:
        info = json.loads(lock_model.description or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _is_stale(lock_model: Any) -> bool:
    """True when the lock's holder is gone: killed on this host, or silent for longer than any
    transaction takes."""
    info = _holder(lock_model)
    try:
        age = time.time() - float(info.get("time", 0))
    except (TypeError, ValueError):
        return True
    return age > LOCK_TTL_S or _holder_is_dead(str(info.get("owner", "")))


def _is_live_lock(client: Any, name: str, alias: str) -> bool:
    """True while a live process holds the lock of `name@alias` (its move is under way)."""
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_registered_model(_lock_name(name, alias))
    except MlflowException:
        return False
    return not _is_stale(held)


def _holder_is_dead(owner: str) -> bool:
    """True when the lock's owner was a process on this host that no longer runs (killed)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _unlock(client: Any, lock: str) -> None:
    try:
        retry_locked(client.delete_registered_model)(lock)
    except Exception as error:  # already broken by another process: nothing to release
        _log.debug("alias lock %s already gone: %s", lock, error)


def _acquire(client: Any, name: str, alias: str, wait_s: float) -> Optional[str]:
    lock = _lock_name(name, alias)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        if _try_lock(client, lock):
            return lock
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _pending_key(event_key: str, alias: str) -> str:
    return f"{PENDING_PREFIX}{alias}.{event_key.removeprefix(_events.EVENT_TAG_PREFIX)}"


def _event_key(pending_key: str) -> tuple[str, str]:
    """(alias, event tag key) of an intent tag key; aliases never contain a dot."""
    alias, _, stamp = pending_key.removeprefix(PENDING_PREFIX).partition(".")
    return alias, _events.EVENT_TAG_PREFIX + stamp


def _finish(ops: AliasOps, name: str, pending_key: str, event_value: str) -> None:
    """Record the event of an intent whose alias did move (idempotent: same tag key, same value)."""
    _, event_key = _event_key(pending_key)
    if event_key not in ops.get_tags(name):
        upsert_tag(ops.set_tag, name, event_key, event_value)  # two readers repairing one crash write it at once
    _delete_tag(ops, name, pending_key)


def _pending_for(tags: Mapping[str, str], alias: str) -> list[str]:
    return [k for k in tags if k.startswith(PENDING_PREFIX) and _event_key(k)[0] == alias]


def repair(client: Any, ops: AliasOps, name: str, tags: Mapping[str, str], holding_lock: bool = False) -> list[str]:
    """Complete or undo alias moves that a killed process left half done; returns what was reported.

    Runs on every read of an entry that carries an intent tag. An intent whose alias lock a live
    process holds is that process's move under way, and is left to it (`holding_lock`: the caller
    holds it, inside `move_alias`). Otherwise every step is idempotent (the event tag key is fixed by
    the intent), so two readers repairing at once end as either alone would.
    """
    problems: list[str] = []
    for key in [k for k in tags if k.startswith(PENDING_PREFIX)]:
        alias, _ = _event_key(key)
        if not holding_lock and _is_live_lock(client, name, alias):
            continue
        try:
            event = json.loads(tags[key])
            now = ops.get_alias(name, alias)
            if now == event["to_version"]:
                _finish(ops, name, key, tags[key])
                _log.warning("%s %s@%s: recorded the alias move -> %s that an interrupted process left "
                             "unrecorded", ops.kind, name, alias, now)
            elif now == event["from_version"]:
                _delete_tag(ops, name, key)
                _log.warning("%s %s@%s: dropped an interrupted alias move that never happened", ops.kind, name, alias)
            else:
                problems.append(f"{ops.kind} {name}@{alias} points at {now}, but an interrupted move "
                                f"{event['from_version']} -> {event['to_version']} is pending (tag {key})")
        except (ValueError, KeyError, TypeError):
            problems.append(f"{ops.kind} {name}: unreadable tag {key}; delete it by hand")
    for problem in problems:
        _log.error(problem)
    return problems


def _delete_tag(ops: AliasOps, name: str, key: str) -> None:
    try:
        retry_locked(ops.delete_tag)(name, key)
    except Exception as error:  # a concurrent repair (or the transaction itself) deleted it first
        if key in ops.get_tags(name):
            raise error


def _maybe_crash_for_test() -> None:
    """`LLMOPS_TEST_KILL_AFTER_ALIAS_MOVE=1` SIGKILLs this process between the swap and its record, so
    a test can prove the next read repairs it (a real kill at a chosen point cannot be timed otherwise)."""
    if os.environ.get("LLMOPS_TEST_KILL_AFTER_ALIAS_MOVE") == "1":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def move_alias(
    client: Any,
    ops: AliasOps,
    name: str,
    alias: str,
    version: int,
    reason: Optional[str] = None,
    evidence: Optional[Mapping[str, Any]] = None,
    expected: Any = ...,
) -> _events.AliasEvent:
    """Point `name@alias` at `version` and record the move, as one transaction (see the module doc).

    Args:
        expected: the version (or None: no holder) the alias must still point at; omitted: any.

    Raises:
        AliasConflictError: the alias points elsewhere than `expected` (nothing changed).
        RegistryError: the alias stayed locked for `LOCK_WAIT_S` seconds.
    """
    lock = _acquire(client, name, alias, LOCK_WAIT_S)
    if lock is None:
        raise RegistryError(f"{ops.kind} {name}@{alias} is being moved by another process (lock "
                            f"{_lock_name(name, alias)} held for over {LOCK_WAIT_S:.0f} s); try again")
    try:
        tags = ops.get_tags(name)
        if _pending_for(tags, alias):
            problems = repair(client, ops, name, {k: tags[k] for k in _pending_for(tags, alias)}, holding_lock=True)
            if problems:
                raise RegistryError(problems[0])
        previous = ops.get_alias(name, alias)
        if expected is not ... and previous != expected:
            was = "no version" if expected is None else f"version {expected}"
            now = "no version" if previous is None else f"version {previous}"
            raise AliasConflictError(
                f"{name}@{alias} moved while this ran: it pointed at {was} and now points at {now}; "
                "nothing was changed (re-run to compare against the new holder)", previous)
        event = _events.new_event(name, alias, previous, int(version), reason, evidence)
        event_key, event_value = _events.event_tag(event)
        pending_key = _pending_key(event_key, alias)
        retry_locked(ops.set_tag)(name, pending_key, event_value)
        try:
            retry_locked(ops.set_alias)(name, alias, int(version))
        except BaseException:
            retry_locked(ops.delete_tag)(name, pending_key)
            raise
        _maybe_crash_for_test()
        _finish(ops, name, pending_key, event_value)
        return event
    finally:
        if lock is not None:
            _unlock(client, lock)
