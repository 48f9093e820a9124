"""Every registry operation on the four stores a team may use (issue 12, item 1):

- the embedded SQLite file;
- PostgreSQL directly (`postgresql://…`);
- `mlflow server` on PostgreSQL with proxied artifacts (`--artifacts-destination`);
- `mlflow server` with `--no-serve-artifacts` and a shared artifact root.

The servers are real processes, started once for the module. Names are unique per test, so the
tests share the stores without seeing each other's entries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from llmops import registry
from llmops.errors import NotFoundError, RegistryError
from llmops.registry.aliases import PENDING_PREFIX, AliasConflictError
from tests.services import mlflow_server, postgres_database

STORES = ["sqlite", "postgresql", "server-proxied", "server-shared"]


@pytest.fixture(scope="module")
def team_stores(tmp_path_factory, _template_store):
    """{store kind: tracking URI}, with the real services running for the whole module."""
    import contextlib
    import shutil

    folder = tmp_path_factory.mktemp("team-stores")
    with contextlib.ExitStack() as stack:
        # Two databases: experiments a direct client creates keep artifacts on its own disk, so a server
        # must not share them (README "Team set-up" says the same to users).
        database = stack.enter_context(postgres_database("direct"))
        server_database = stack.enter_context(postgres_database("server"))
        proxied = stack.enter_context(mlflow_server(server_database, folder / "proxied", artifacts="proxied"))
        shared = stack.enter_context(mlflow_server(f"sqlite:///{folder / 'shared.db'}", folder / "shared", artifacts="shared"))
        sqlite = folder / "mlflow.db"
        shutil.copy(_template_store, sqlite)
        yield {"sqlite": f"sqlite:///{sqlite}", "postgresql": database,
               "server-proxied": proxied.url, "server-shared": shared.url}


@pytest.fixture(params=STORES)
def team_store(request, team_stores, tmp_path, monkeypatch):
    """One store of the four as MLFLOW_TRACKING_URI, a fresh working directory and artifact cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_stores[request.param])
    monkeypatch.setenv("LLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    return request.param


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _adapter(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "seed": seed}))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    return folder


def test_base_adapter_alias_history(team_store, tiny_model_path, tmp_path):
    name, base_name = _unique("team"), _unique("base")
    base = registry.register_base_model(base_name, tiny_model_path)
    assert (base.kind, base.source, base.version) == ("base", str(tiny_model_path), 1)
    assert base.digest and base.digest.startswith("sha256:")
    assert registry.resolve_model_ref(base.ref).local_path() == tiny_model_path  # referenced, not copied

    files = _adapter(tmp_path / "adapter", seed=1)
    adapter = registry.register_adapter(name, files, base=base.ref, alias="candidate", tags={"team.note": "x"})
    assert (adapter.kind, adapter.base, adapter.aliases) == ("adapter", base.ref, ("candidate",))
    local = registry.resolve_model_ref(f"{name}@candidate").local_path()
    for file in files.iterdir():
        assert (local / file.name).read_bytes() == file.read_bytes()
    if team_store == "server-proxied":  # remote artifacts: downloaded into the digest-keyed cache
        assert local.parent.parent == tmp_path / "cache" / name
        assert local.name == adapter.digest.removeprefix("sha256:")

    registry.set_model_alias(name, "production", 1, reason="first")
    second = registry.register_adapter(name, _adapter(tmp_path / "adapter2", seed=2), base=base.ref)
    registry.set_model_alias(name, "production", second.version, reason="second", expected=1)
    with pytest.raises(AliasConflictError, match=r"now points at version 2") as conflict:
        registry.set_model_alias(name, "production", 1, expected=None)
    assert conflict.value.holder == 2
    assert registry.resolve_model_ref(f"{name}@production").version == 2
    moves = [(e.alias, e.from_version, e.to_version, e.reason) for e in registry.alias_history(name)]
    assert moves == [("candidate", None, 1, "registered"), ("production", None, 1, "first"),
                     ("production", 1, 2, "second")]
    listed = {m.name: m for m in registry.search_models(name)}
    assert list(listed) == [name] and listed[name].aliases == {"candidate": 1, "production": 2}
    assert not [m for m in registry.search_models("llmops-lock")], "alias locks are not models"


def test_prompts_on_every_store(team_store):
    name = _unique("qa")
    first = registry.register_prompt(name, "Q: {{ question }}", alias="production")
    second = registry.register_prompt(name, [{"role": "user", "content": "Q: {{ question }}?"}])
    assert (first.version, second.version) == (1, 2)
    registry.set_prompt_alias(name, "production", 2, expected=1)
    with pytest.raises(AliasConflictError):
        registry.set_prompt_alias(name, "production", 1, expected=1)
    assert registry.render_prompt(f"{name}@production", {"question": "why"}) == [{"role": "user", "content": "Q: why?"}]
    assert [(e.from_version, e.to_version) for e in registry.prompt_alias_history(name)] == [(None, 1), (1, 2)]


def test_failed_registration_leaves_nothing(team_store, tmp_path):
    name = _unique("orphan")
    with pytest.raises(NotFoundError):
        registry.register_adapter(name, _adapter(tmp_path / "a", seed=3), base=_unique("nobase") + "/1")
    with pytest.raises(RegistryError, match="does not exist as a local folder"):
        registry.register_base_model(name, str(tmp_path / "missing"))
    assert registry.search_models(name) == []


def test_kill_between_alias_move_and_record_is_repaired(team_store, tiny_model_path):
    """SIGKILL after the alias moved and before its event was written: the next read records it."""
    name = _unique("killed")
    registry.register_base_model(name, tiny_model_path)
    registry.register_base_model(name, tiny_model_path)
    registry.set_model_alias(name, "production", 1)
    env = {**os.environ, "LLMOPS_TEST_KILL_AFTER_ALIAS_MOVE": "1"}
    killed = subprocess.run([sys.executable, "-m", "llmops", "models", "alias", name, "production", "2",
                             "--reason", "killed midway"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    import mlflow

    raw = mlflow.MlflowClient().get_registered_model(name)
    assert any(k.startswith(PENDING_PREFIX) for k in raw.tags), "the intent survived the kill"
    assert registry.resolve_model_ref(f"{name}@production").version == 2
    history = registry.alias_history(name)
    assert [(e.from_version, e.to_version, e.reason) for e in history][-1] == (1, 2, "killed midway")
    assert not any(k.startswith(PENDING_PREFIX) for k in mlflow.MlflowClient().get_registered_model(name).tags)
    registry.set_model_alias(name, "production", 1, expected=2)  # and the alias is not left locked


def test_a_read_leaves_a_live_move_to_its_mover(team_store, tiny_model_path):
    """A read while another process is between its intent and its record (the lock held, the alias
    already swapped) leaves the intent to the mover: two writers of one event tag would race on
    PostgreSQL. Once the lock is gone, the next read records the move."""
    import mlflow

    from llmops.registry import aliases, events

    name = _unique("live")
    registry.register_base_model(name, tiny_model_path)
    registry.register_base_model(name, tiny_model_path)
    client = mlflow.MlflowClient()
    lock = aliases._acquire(client, name, "production", wait_s=5)  # held by this (live) process
    event = events.new_event(name, "production", None, 2, "mid-move", None)
    event_key, event_value = events.event_tag(event)
    pending = aliases._pending_key(event_key, "production")
    client.set_registered_model_tag(name, pending, event_value)
    client.set_registered_model_alias(name, "production", "2")

    assert registry.resolve_model_ref(f"{name}@production").version == 2
    tags = client.get_registered_model(name).tags
    assert pending in tags and event_key not in tags, "a reader finished a move it does not own"

    aliases._unlock(client, lock)
    registry.resolve_model_ref(name)
    tags = client.get_registered_model(name).tags
    assert pending not in tags and tags[event_key] == event_value
    assert [(e.from_version, e.to_version, e.reason) for e in registry.alias_history(name)] == [(None, 2, "mid-move")]


def _at_once(threads: int, work) -> list[Exception]:
    """Run `work()` on `threads` threads released together; the exceptions they raised."""
    import threading

    start, errors = threading.Barrier(threads), []

    def run() -> None:
        start.wait()
        try:
            work()
        except Exception as error:
            errors.append(error)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


def test_concurrent_writers_of_one_new_tag_on_postgresql(team_stores, tiny_model_path, monkeypatch):
    """MLflow's SQL store sets a tag by a read then an insert, and PostgreSQL refuses the second
    insert of a new key. Readers that find one crashed move at the same moment all finish it, and
    evaluations that tag one version at the same moment all succeed (the last one wins)."""
    import mlflow

    from llmops.registry import aliases
    from llmops.registry.models import _model_ops

    uri = team_stores["postgresql"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = _unique("race")
    version = registry.register_base_model(name, tiny_model_path)
    ops = _model_ops(client)
    for round_ in range(10):
        pending = f"{PENDING_PREFIX}production.{round_:06d}"
        client.set_registered_model_tag(name, pending, "{}")
        errors = _at_once(4, lambda: aliases._finish(ops, name, pending, "{}"))
        assert not errors, errors[0]
        tags = client.get_registered_model(name).tags
        assert pending not in tags and tags[aliases._event_key(pending)[1]] == "{}"

        key = f"llmops.eval.race{round_}.correct"
        errors = _at_once(4, lambda: registry.tag_model_version(version.ref, {key: "0.5"}))
        assert not errors, errors[0]
        assert client.get_model_version(name, "1").tags[key] == "0.5"


def test_refused_request_is_one_line_naming_the_store(team_stores, monkeypatch):
    """A request the server refuses (a model version whose source lies outside any run) becomes one
    line that names the server."""
    import mlflow

    from llmops.registry.store import store_error_message

    url = team_stores["server-proxied"]
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    name = _unique("refused")
    client.create_registered_model(name)
    with pytest.raises(Exception) as refused:
        client.create_model_version(name, source="/etc")
    message = store_error_message(refused.value, url)
    assert message.startswith(f"the MLflow tracking server at {url} refused the request: ")
    assert "Invalid model version source" in message and "\n" not in message
