"""The registry API against a real MLflow SQLite store."""

import json

import pytest

from llmops import registry
from llmops.errors import NotFoundError, PromptRenderError, RegistryError


@pytest.fixture
def base_folder(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    return folder


def test_base_model_versions_refs_and_aliases(store, base_folder):
    v1 = registry.register_base_model("tiny", base_folder)
    v2 = registry.register_base_model("tiny", "org/model", revision="abc123")
    assert (v1.ref, v1.kind, v1.source) == ("tiny/1", "base", str(base_folder.resolve()))
    assert v1.digest.startswith("sha256:")
    assert (v2.ref, v2.source, v2.revision) == ("tiny/2", "org/model", "abc123")
    assert registry.resolve_model_ref("tiny").version == 2  # bare name = latest
    registry.set_model_alias("tiny", "production", 1, reason="first")
    registry.set_model_alias("tiny", "production", 2, reason="second")
    resolved = registry.resolve_model_ref("tiny@production")
    assert resolved.version == 2 and resolved.aliases == ("production",)
    events = registry.alias_history("tiny")
    assert [(e.from_version, e.to_version, e.reason) for e in events] == [(None, 1, "first"), (1, 2, "second")]
    assert [m.name for m in registry.search_models()] == ["tiny"]


def test_re_resolving_with_the_known_version_notices_moves_and_deletions(store, base_folder):
    """A gateway re-checks its refs every few seconds, passing what they resolved to before."""
    from mlflow import MlflowClient

    for _ in range(3):
        registry.register_base_model("tiny", base_folder)
    registry.set_model_alias("tiny", "production", 1)
    known = registry.resolve_model_ref("tiny@production")
    assert registry.resolve_model_ref("tiny@production", known) is known  # unchanged
    registry.set_model_alias("tiny", "production", 2)
    moved = registry.resolve_model_ref("tiny@production", known)
    assert moved.version == 2 and moved.aliases == ("production",)
    latest = registry.resolve_model_ref("tiny")
    assert registry.resolve_model_ref("tiny", latest) is latest
    pinned = registry.resolve_model_ref("tiny/3")
    MlflowClient().delete_model_version("tiny", "3")
    with pytest.raises(NotFoundError):
        registry.resolve_model_ref("tiny/3", pinned)
    assert registry.resolve_model_ref("tiny", latest).version == 2  # the latest is gone: the one before
    MlflowClient().delete_model_version("tiny", "2")
    with pytest.raises(NotFoundError):  # the alias went with its version
        registry.resolve_model_ref("tiny@production", moved)


def test_adapter_version_stores_files_and_lineage(store, base_folder, tmp_path):
    registry.register_base_model("tiny", base_folder)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x01" * 32)
    version = registry.register_adapter(
        "capitals", adapter, base="tiny/1", tags={"llmops.dataset_digest": "sha256:x"}, alias="candidate"
    )
    assert (version.ref, version.kind, version.base, version.aliases) == ("capitals/1", "adapter", "tiny/1", ("candidate",))
    assert version.tags["llmops.dataset_digest"] == "sha256:x"
    assert version.tags["llmops.base_digest"] == registry.resolve_model_ref("tiny/1").digest
    local = version.local_path()
    assert (local / "adapter_model.safetensors").read_bytes() == b"\x01" * 32
    assert str(store.parent) in str(local)  # artifacts live beside the embedded store


def test_prompts_versions_aliases_diff_and_langchain(store):
    p1 = registry.register_prompt("qa", "Q: {{ question }} A:", alias="production", model_config={"temperature": 0.2})
    p2 = registry.register_prompt("qa", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{ question }}"}])
    assert (p1.ref, p2.ref) == ("qa/1", "qa/2")
    assert registry.get_prompt("qa@production").model_config == {"temperature": 0.2}
    assert registry.render_prompt("qa", {"question": "Why?"})[1] == {"role": "user", "content": "Why?"}
    diff = registry.diff_prompts("qa/1", "qa/2")
    assert "-Q: {{ question }} A:" in diff and "+[user] {{ question }}" in diff and '-  "temperature": 0.2' in diff
    chat = registry.to_langchain("qa/2").invoke({"question": "Why?"})
    assert [m.content for m in chat.to_messages()] == ["Be brief.", "Why?"]
    with pytest.raises(PromptRenderError, match="missing variable"):
        registry.render_prompt("qa@production", {})


def test_errors_leave_the_store_unchanged(store, snapshot, base_folder):
    registry.register_base_model("tiny", base_folder)
    registry.register_prompt("qa", "{{ q }}")
    before = snapshot()
    with pytest.raises(NotFoundError, match="has no version 9"):
        registry.set_model_alias("tiny", "staging", 9)
    with pytest.raises(NotFoundError, match="not found"):
        registry.resolve_model_ref("nope@production")
    with pytest.raises(RegistryError, match="name of a prompt"):
        registry.register_base_model("qa", base_folder)
    with pytest.raises(RegistryError, match="name of a model"):
        registry.register_prompt("tiny", "x")
    with pytest.raises(RegistryError, match="syntax error"):
        registry.register_prompt("qa", "{{ broken")
    with pytest.raises(NotFoundError):
        registry.register_adapter("capitals", base_folder, base="missing/1")
    assert snapshot() == before
