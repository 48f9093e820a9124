"""Registering model versions: bases (referenced through a manifest run) and adapters or merged models
(files as run artifacts), on every store. See `models.py` for what a version is.

A tracking server accepts a version only from a run's artifacts, so a base given as a local folder (or
a hub id) is registered from a run in the `llmops-registry` experiment whose only artifact is
`base/manifest.json`: source, revision, digest and file list of the weights, which stay where they
are. A failed registration leaves no model, version or live run behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from llmops.errors import RegistryError
from llmops.registry.digest import tree_digest
from llmops.registry.models import (
    _HUB_ID, KIND_ADAPTER, KIND_BASE, REGISTRY_EXPERIMENT, TAG_BASE, TAG_BASE_DIGEST, TAG_DIGEST, TAG_KIND,
    TAG_REVISION, TAG_SOURCE, TAG_VERSION, ModelVersion, _registered_model, _to_model_version,
    resolve_model_ref, set_model_alias,
)
from llmops.registry.refs import check_alias, check_name
from llmops.registry.store import configure, ensure_experiment, retry_locked

__all__ = ["register_base_model", "register_adapter"]


def _check_not_a_prompt(client: Any, name: str) -> None:
    """Refuse a model name that a prompt holds before anything (a run, artifacts) is written."""
    from mlflow.exceptions import MlflowException

    try:
        prompt = client.get_prompt(name)
    except MlflowException:
        return
    if prompt is not None:
        raise RegistryError(f"{name!r} is already the name of a prompt; models and prompts share names")


def _ensure_registered_model(client: Any, name: str, description: str | None) -> bool:
    """Create the registered model if needed; True when it was created by this call."""
    if _registered_model(client, name) is not None:
        return False
    try:
        retry_locked(client.create_registered_model)(name, tags={"llmops.type": "model"}, description=description)
    except Exception as error:
        if "prompt" in str(error).lower():
            raise RegistryError(f"{name!r} is already the name of a prompt; models and prompts share names") from None
        if _registered_model(client, name) is not None:
            return False  # another process (a second fine-tune) created it at the same moment
        raise
    return True


def _create_version(
    name: str, source: str, tags: Mapping[str, str], description: str | None, run_id: str | None = None
) -> ModelVersion:
    """Create a version (and its registered model if new); undo the model if the version fails."""
    client = configure()
    created_model = _ensure_registered_model(client, name, description)
    try:
        mv = retry_locked(client.create_model_version)(
            name, source=source, run_id=run_id, tags=dict(tags), description=description
        )
    except BaseException:
        if created_model:
            retry_locked(client.delete_registered_model)(name)
        raise
    return _to_model_version(mv, ())


def _common_tags() -> dict[str, str]:
    import llmops

    return {TAG_VERSION: llmops.__version__}


def register_base_model(
    name: str, source: str | Path, revision: str | None = None, description: str | None = None
) -> ModelVersion:
    """Register a base model by local folder or hub id (+ revision); the weights are referenced, not copied.

    Raises:
        RegistryError: invalid name, a path that does not exist, or a source that is neither.
    """
    check_name(name, "model name")
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RegistryError(f"{path} is not a Hugging Face model folder (no config.json)")
        resolved = str(path.resolve())
        tags = {TAG_KIND: KIND_BASE, TAG_SOURCE: resolved, TAG_DIGEST: tree_digest(path)}
    elif _HUB_ID.match(text) and not text.startswith((".", "~")):
        resolved = text
        tags = {TAG_KIND: KIND_BASE, TAG_SOURCE: text, TAG_DIGEST: f"hub:{text}@{revision or 'main'}"}
    else:
        raise RegistryError(f"{text!r} does not exist as a local folder and is not a hub id (org/name)")
    if revision:
        tags[TAG_REVISION] = revision
    tags.update(_common_tags())
    manifest = {"kind": KIND_BASE, "source": resolved, "revision": revision, "digest": tags[TAG_DIGEST],
                "llmops_version": tags[TAG_VERSION],
                "files": _file_list(path) if path.exists() else []}
    client = configure()
    _check_not_a_prompt(client, name)
    run_id = retry_locked(client.create_run)(
        ensure_experiment(REGISTRY_EXPERIMENT), run_name=f"register-base-{name}", tags={TAG_KIND: KIND_BASE}).info.run_id
    try:
        retry_locked(client.log_dict)(run_id, manifest, "base/manifest.json")
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/base"
        _end_quietly(client, run_id)
        return _create_version(name, source, tags, description, run_id=run_id)
    except BaseException:
        retry_locked(client.delete_run)(run_id)  # no orphan run left behind a failed registration
        raise


def _end_quietly(client: Any, run_id: str) -> None:
    """End a registry bookkeeping run without MLflow's "View run at <url>" line on stdout."""
    import os

    before = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        retry_locked(client.set_terminated)(run_id)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
        else:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = before


def _file_list(folder: Path) -> list[dict[str, Any]]:
    return [{"path": str(f.relative_to(folder)), "bytes": f.stat().st_size}
            for f in sorted(folder.rglob("*")) if f.is_file()]


def register_adapter(
    name: str,
    adapter_dir: str | Path,
    base: str,
    tags: Mapping[str, str] | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    description: str | None = None,
    kind: str = KIND_ADAPTER,
    reason: str | None = None,
) -> ModelVersion:
    """Register LoRA adapter files (or merged weights, `kind="merged"`) as a new version of `name`.

    The files are logged as artifacts of `run_id` (or of a new run in the `llmops-registry`
    experiment). Lineage tags are added: base ref and digest, adapter digest, llmops version, plus `tags`.
    When `alias` is given it is moved to the new version (and recorded).

    Raises:
        RegistryError / NotFoundError: invalid name, missing files, unknown base.
    """
    check_name(name, "model name")
    if alias is not None:
        check_alias(alias)
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir() or not any(adapter_dir.iterdir()):
        raise RegistryError(f"adapter folder {adapter_dir} does not exist or is empty")
    base_version = resolve_model_ref(base)
    client = configure()
    all_tags = {
        TAG_KIND: kind,
        TAG_BASE: base_version.ref,
        TAG_BASE_DIGEST: base_version.digest or "",
        TAG_DIGEST: tree_digest(adapter_dir),
        **_common_tags(),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    _check_not_a_prompt(client, name)
    own_run = run_id is None
    if own_run:
        run_id = retry_locked(client.create_run)(ensure_experiment(REGISTRY_EXPERIMENT), run_name=f"register-{name}").info.run_id
    artifact_path = "adapter" if kind == KIND_ADAPTER else "model"
    try:
        retry_locked(client.log_artifacts)(run_id, str(adapter_dir), artifact_path)
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        if own_run:
            _end_quietly(client, run_id)
        all_tags[TAG_SOURCE] = source
        version = _create_version(name, source, all_tags, description, run_id=run_id)
    except BaseException:
        if own_run:
            retry_locked(client.delete_run)(run_id)
        raise
    if alias is not None:
        try:
            set_model_alias(name, alias, version.version, reason=reason or "registered")
        except BaseException:
            retry_locked(client.delete_model_version)(name, str(version.version))
            raise
        version = resolve_model_ref(version.ref)
    return version
