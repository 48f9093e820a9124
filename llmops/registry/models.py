"""The model registry: base models and LoRA adapters as versions of registered models in MLflow.

A base-model version references its weights (a local folder or a hub id + revision), never copies
them: it is registered from a run in the `llmops-registry` experiment whose only artifact is
`base/manifest.json` (source, revision, digest and file list of the weights). A tracking server
accepts a version only from a run's artifacts, so this works on every store, and the weights stay
where they are. An adapter (or merged model) version stores its files as artifacts of an MLflow run
and carries lineage tags (base ref and digest, dataset, config, prompt, git commit, llmops version);
engines and fine-tunes read them through the local artifact cache (`artifact_cache.py`). Every alias
move is a compare-and-swap transaction recorded as an event (see `aliases.py`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from llmops.errors import NotFoundError, RegistryError
from llmops.registry import aliases as _aliases
from llmops.registry import events as _events
from llmops.registry.refs import Ref, check_alias, check_name, parse_ref
from llmops.registry.store import configure, upsert_tag

__all__ = [
    "ModelVersion",
    "RegisteredModelSummary",
    "resolve_model_ref",
    "set_model_alias",
    "alias_history",
    "search_models",
    "tag_model_version",
    "KIND_BASE",
    "KIND_ADAPTER",
    "KIND_MERGED",
]

KIND_BASE, KIND_ADAPTER, KIND_MERGED = "base", "adapter", "merged"
TAG_KIND = "llmops.kind"
TAG_SOURCE = "llmops.source"
TAG_REVISION = "llmops.revision"
TAG_DIGEST = "llmops.digest"
TAG_BASE = "llmops.base"
TAG_BASE_DIGEST = "llmops.base_digest"
TAG_VERSION = "llmops.llmops_version"
REGISTRY_EXPERIMENT = "llmops-registry"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model, as llmops sees it."""

    name: str
    version: int
    kind: str
    """`base` (weights referenced by `source`), `adapter` (LoRA files as artifacts) or `merged`."""
    source: str
    """Local folder or hub id of a base; artifact location of an adapter."""
    revision: str | None = None
    base: str | None = None
    """For adapters: the base model version it was trained on, as `name/VERSION`."""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""
    created: datetime | None = None
    run_id: str | None = None

    @property
    def ref(self) -> str:
        """The canonical reference `name/VERSION`."""
        return f"{self.name}/{self.version}"

    @property
    def digest(self) -> str | None:
        """Content digest of the weights (base) or adapter files (adapter)."""
        return self.tags.get(TAG_DIGEST)

    def local_path(self) -> Path:
        """A local folder holding this version's files.

        A base is its referenced folder. Adapter and merged files on a local or shared file system
        (SQLite store, a tracking server's shared artifact root) are read where they are; from a remote
        artifact store (`mlflow-artifacts:/…`, `s3://…`) they are downloaded once per machine into the
        digest-keyed artifact cache (`artifact_cache.py`), which every engine and fine-tune shares.

        Raises:
            RegistryError: the version is a base referenced by hub id (llmops never downloads
                weights itself; load it through transformers with its revision), its folder is gone,
                or downloaded files do not match the registered digest.
        """
        if self.kind == KIND_BASE and not _is_local_source(self.source):
            raise RegistryError(
                f"{self.ref} references hub model {self.source!r}; load it through transformers "
                "(with the revision) rather than as a local folder"
            )
        if self.source.startswith("file://") or _is_local_source(self.source):
            path = Path(self.source.removeprefix("file://"))
            if not path.exists():
                hint = " (a base is referenced, not copied: put its files at that path on this machine)" \
                    if self.kind == KIND_BASE else ""
                raise RegistryError(f"{self.ref}: its files at {path} do not exist on this machine{hint}")
            return path
        from llmops.registry.artifact_cache import cached_artifact

        if not (self.digest or "").startswith("sha256:"):
            raise RegistryError(f"{self.ref} has no content digest (tag {TAG_DIGEST}); re-register it")
        return cached_artifact(self.name, self.version, self.digest, lambda folder: _download(self.source, folder))


@dataclass(frozen=True)
class RegisteredModelSummary:
    """A registered model with its latest version and aliases, for listings."""

    name: str
    latest_version: int | None
    kind: str | None
    aliases: dict[str, int]
    description: str = ""


def _is_local_source(source: str) -> bool:
    return source.startswith(("/", "file://")) or Path(source).exists()


def _download(source: str, folder: Path) -> None:
    """Download the artifact folder `source` so that its files are directly inside `folder`."""
    import mlflow

    got = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder)))
    if got.resolve() == folder.resolve():
        return
    staged = got.rename(folder / ".llmops-download")
    for child in staged.iterdir():
        child.rename(folder / child.name)
    staged.rmdir()


def _is_internal(model: Any) -> bool:
    """Prompts (same name space in MLflow) and llmops' alias locks are not models."""
    tags = model.tags or {}
    return tags.get("mlflow.prompt.is_prompt") == "true" or model.name.startswith(_aliases.LOCK_PREFIX)


def _to_model_version(mv: Any, aliases: tuple[str, ...] | None = None) -> ModelVersion:
    tags = dict(mv.tags or {})
    created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc) if mv.creation_timestamp else None
    return ModelVersion(
        name=mv.name,
        version=int(mv.version),
        kind=tags.get(TAG_KIND, KIND_BASE),
        source=tags.get(TAG_SOURCE, mv.source),
        revision=tags.get(TAG_REVISION) or None,
        base=tags.get(TAG_BASE) or None,
        tags=tags,
        aliases=tuple(sorted(aliases if aliases is not None else (mv.aliases or ()))),
        description=mv.description or "",
        created=created,
        run_id=mv.run_id or None,
    )


def _registered_model(client: Any, name: str):
    """The MLflow registered model `name`, or None. Prompts (same name space in MLflow) read as None."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) or "not found" in str(error).lower():
            return None
        raise
    if _is_internal(model):
        return None
    if any(k.startswith(_aliases.PENDING_PREFIX) for k in (model.tags or {})):
        _aliases.repair(client, _model_ops(client), name, model.tags or {})
        model = client.get_registered_model(name)
    return model


def _model_ops(client: Any) -> _aliases.AliasOps:
    return _aliases.AliasOps(
        kind="model",
        get_tags=lambda name: client.get_registered_model(name).tags or {},
        set_tag=client.set_registered_model_tag,
        delete_tag=client.delete_registered_model_tag,
        get_alias=lambda name, alias: _aliases_of(client.get_registered_model(name)).get(alias),
        set_alias=lambda name, alias, version: client.set_registered_model_alias(name, alias, str(version)),
        delete_alias=client.delete_registered_model_alias,
    )


def _model_names(client: Any) -> list[str]:
    return [m.name for m in client.search_registered_models(max_results=1000) if not _is_internal(m)]


def _missing_model(client: Any, name: str) -> NotFoundError:
    close = difflib.get_close_matches(name, _model_names(client), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return NotFoundError(f"model {name!r} not found in the registry{hint}; see `llmops models list`")


def _version_numbers(client: Any, name: str) -> list[int]:
    return [int(v.version) for v in client.search_model_versions(f"name='{name}'")]


def _aliases_of(model: Any) -> dict[str, int]:
    aliases = model.aliases or {}
    if isinstance(aliases, dict):
        return {alias: int(version) for alias, version in aliases.items()}
    return {a.alias: int(a.version) for a in aliases}


def resolve_model_ref(ref: str | Ref, known: ModelVersion | None = None) -> ModelVersion:
    """Resolve `name`, `name@alias` or `name/VERSION` to the model version it names now.

    Args:
        ref: The reference.
        known: What `ref` resolved to before (a gateway re-checking its refs): when the alias, or the
            latest version, still names that version, `known` comes back without reading the version
            again (one registry call instead of two). A `name/VERSION` ref is always read, so that a
            deleted version is noticed.

    Raises:
        NotFoundError: no such model, alias or version (with what exists instead).
    """
    from mlflow.exceptions import MlflowException

    parsed = parse_ref(ref) if isinstance(ref, str) else ref
    client = configure()
    model = _registered_model(client, parsed.name)
    if model is None:
        raise _missing_model(client, parsed.name)
    aliases = _aliases_of(model)
    if parsed.alias is not None:
        if parsed.alias not in aliases:
            existing = ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items())) or "none"
            raise NotFoundError(f"model {parsed.name!r} has no alias {parsed.alias!r} (aliases: {existing})")
        number = aliases[parsed.alias]
    elif parsed.version is not None:
        number = parsed.version
    else:
        versions = _version_numbers(client, parsed.name)
        if not versions:
            raise NotFoundError(f"model {parsed.name!r} has no versions yet")
        number = max(versions)
    if known is not None and parsed.version is None and (known.name, known.version) == (parsed.name, number):
        return known  # an alias or a latest version exists only while its version does
    # One read of the version itself; the list of versions (a search that grows with the model's
    # history) is read only to explain a miss. Gateways re-resolve their refs every few seconds.
    try:
        mv = client.get_model_version(parsed.name, str(number))
    except MlflowException:  # no such version, or deleted since the alias was read
        versions = _version_numbers(client, parsed.name)
        latest = f"latest is {max(versions)}" if versions else "it has no versions"
        raise NotFoundError(f"model {parsed.name!r} has no version {number} ({latest})") from None
    holding = tuple(a for a, v in aliases.items() if v == number)
    return _to_model_version(mv, holding)


def set_model_alias(
    name: str,
    alias: str,
    version: int | str,
    reason: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    expected: Any = ...,
) -> _events.AliasEvent:
    """Point `alias` at `version` of model `name` and record the move, as one transaction.

    Args:
        expected: compare-and-swap: the version (None: no holder) the alias must still point at.

    Raises:
        NotFoundError: the model or version does not exist (nothing is changed).
        AliasConflictError: the alias no longer points at `expected` (nothing is changed).
        RegistryError: the alias is invalid.
    """
    check_alias(alias)
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise RegistryError(f"version must be an integer, got {version!r}") from None
    target = resolve_model_ref(Ref(check_name(name, "model name"), version=number))
    client = configure()
    return _aliases.move_alias(client, _model_ops(client), name, alias, target.version, reason, evidence, expected)


def tag_model_version(ref: str, tags: Mapping[str, Any]) -> ModelVersion:
    """Set tags on a model version (evaluation evidence, for example); returns the updated version.

    Raises:
        NotFoundError: the ref names no version.
    """
    version = resolve_model_ref(ref)
    client = configure()
    for key, value in tags.items():  # two evaluations of one version may write the same keys at once
        upsert_tag(client.set_model_version_tag, version.name, str(version.version), key, str(value)[:4800])
    return resolve_model_ref(version.ref)


def alias_history(name: str) -> list[_events.AliasEvent]:
    """Every recorded alias move of model `name`, oldest first.

    Raises:
        NotFoundError: no such model.
    """
    client = configure()
    model = _registered_model(client, check_name(name, "model name"))
    if model is None:
        raise _missing_model(client, name)
    return _events.events_from_tags(model.tags or {})


def search_models(pattern: str | None = None) -> list[RegisteredModelSummary]:
    """Registered models (not prompts) whose name contains `pattern`, sorted by name."""
    client = configure()
    summaries = []
    for model in client.search_registered_models(max_results=1000, order_by=["name ASC"]):
        if _is_internal(model):
            continue
        if pattern and pattern not in model.name:
            continue
        versions = client.search_model_versions(f"name='{model.name}'")
        latest = max(versions, key=lambda v: int(v.version), default=None)
        summaries.append(
            RegisteredModelSummary(
                name=model.name,
                latest_version=int(latest.version) if latest else None,
                kind=(latest.tags or {}).get(TAG_KIND) if latest else None,
                aliases=_aliases_of(model),
                description=model.description or "",
            )
        )
    return summaries
