"""The prompt registry on MLflow's: immutable versions, aliases, strict rendering, diffs, LangChain export.

Templates are Jinja2 (`{{ question }}`), as text or as a chat (a list of `{"role", "content"}`
messages). Model parameters (temperature, max_tokens, ...) are stored with the version. Rendering
is strict: a missing or an unknown variable is an error, never an empty string.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Union

from llmops.errors import NotFoundError, PromptRenderError, RegistryError
from llmops.registry import aliases as _aliases
from llmops.registry import events as _events
from llmops.registry.refs import Ref, check_alias, check_name, parse_ref
from llmops.registry.store import configure, retry_locked

__all__ = [
    "Prompt",
    "Template",
    "register_prompt",
    "get_prompt",
    "render_prompt",
    "render_template",
    "template_variables",
    "compile_template",
    "set_prompt_alias",
    "prompt_alias_history",
    "diff_prompts",
    "search_prompts",
    "to_langchain",
]

Template = Union[str, list[dict[str, str]]]
_ROLES = {"system", "user", "assistant", "developer", "tool"}


@dataclass(frozen=True)
class Prompt:
    """One immutable prompt version."""

    name: str
    version: int
    template: Template
    model_config: dict[str, Any] = field(default_factory=dict)
    commit_message: str = ""
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None

    @property
    def ref(self) -> str:
        """The canonical reference `name/VERSION`."""
        return f"{self.name}/{self.version}"

    @property
    def is_chat(self) -> bool:
        """True for a chat template (a list of messages)."""
        return isinstance(self.template, list)

    @property
    def variables(self) -> list[str]:
        """The variables the template uses, sorted."""
        return template_variables(self.template)

    def render(self, variables: Mapping[str, Any]) -> Template:
        """Render strictly (see `render_template`)."""
        return render_template(self.template, variables, where=self.ref)


# ------------------------------------------------------------------------------------------ templates


@functools.lru_cache(maxsize=1)
def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


def _texts(template: Template) -> list[str]:
    return [template] if isinstance(template, str) else [m["content"] for m in template]


def check_template(template: Any) -> Template:
    """Return `template` if it is a valid text or chat template, else raise RegistryError."""
    from jinja2 import TemplateSyntaxError

    if isinstance(template, str):
        if not template.strip():
            raise RegistryError("the prompt template is empty")
    elif isinstance(template, list) and template:
        for index, message in enumerate(template):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise RegistryError(f"message {index}: a chat message needs exactly the keys 'role' and 'content'")
            if message["role"] not in _ROLES:
                raise RegistryError(f"message {index}: unknown role {message['role']!r} (use {', '.join(sorted(_ROLES))})")
            if not isinstance(message["content"], str):
                raise RegistryError(f"message {index}: 'content' must be a string")
    else:
        raise RegistryError("a template is a non-empty string or a non-empty list of {role, content} messages")
    env = _environment()
    for text in _texts(template):
        try:
            env.parse(text)
        except TemplateSyntaxError as error:
            raise RegistryError(f"template syntax error at line {error.lineno}: {error.message}") from None
    return template


@functools.lru_cache(maxsize=512)
def compile_template(text: str):
    """A compiled strict Jinja template (cached: evaluation renders one template per dataset row)."""
    return _environment().from_string(text)


@functools.lru_cache(maxsize=512)
def _variables_of(text: str) -> frozenset[str]:
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_environment().parse(text)))


def template_variables(template: Template) -> list[str]:
    """The undeclared (caller-supplied) variables of a text or chat template, sorted."""
    names: set[str] = set()
    for text in _texts(template):
        names |= _variables_of(text)
    return sorted(names)


def render_template(template: Template, variables: Mapping[str, Any], where: str = "template") -> Template:
    """Render a template with exactly its variables.

    Raises:
        PromptRenderError: a variable is missing or unknown (both listed by name).
    """
    from jinja2 import UndefinedError

    expected = set(template_variables(template))
    missing = sorted(expected - set(variables))
    unknown = sorted(set(variables) - expected)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing variable(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown variable(s) {', '.join(unknown)}")
        expects = ", ".join(sorted(expected)) or "none"
        raise PromptRenderError(f"{where}: {'; '.join(parts)} (expects: {expects})", missing, unknown)
    try:
        if isinstance(template, str):
            return compile_template(template).render(**variables)
        return [{"role": m["role"], "content": compile_template(m["content"]).render(**variables)} for m in template]
    except UndefinedError as error:  # e.g. an attribute of a variable that does not exist
        raise PromptRenderError(f"{where}: {error.message}") from None


# ----------------------------------------------------------------------------------------- registry


def _is_missing(error: Exception) -> bool:
    text = str(error).lower()
    return "not found" in text or "does_not_exist" in text or "does not exist" in text


def _to_prompt(pv: Any) -> Prompt:
    model_config = pv.model_config or {}
    if hasattr(model_config, "model_dump"):
        model_config = model_config.model_dump(exclude_none=True)
    created = datetime.fromtimestamp(pv.creation_timestamp / 1000, timezone.utc) if pv.creation_timestamp else None
    return Prompt(
        name=pv.name,
        version=int(pv.version),
        template=pv.template,
        model_config=dict(model_config),
        commit_message=pv.commit_message or "",
        aliases=tuple(sorted(pv.aliases or ())),
        tags={k: v for k, v in (pv.tags or {}).items() if not k.startswith("mlflow.")},
        created=created,
    )


def _prompt_names(client: Any) -> list[str]:
    import mlflow

    return [p.name for p in mlflow.genai.search_prompts(max_results=1000)]


def _missing_prompt(client: Any, name: str) -> NotFoundError:
    close = difflib.get_close_matches(name, _prompt_names(client), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return NotFoundError(f"prompt {name!r} not found in the registry{hint}; see `llmops prompts list`")


def _prompt_entity(client: Any, name: str):
    try:
        entity = client.get_prompt(name)
    except Exception as error:
        if _is_missing(error):
            return None
        raise
    if entity is not None and any(k.startswith(_aliases.PENDING_PREFIX) for k in (entity.tags or {})):
        _aliases.repair(client, _prompt_ops(client), name, entity.tags or {})
        entity = client.get_prompt(name)
    return entity


def get_prompt(ref: str | Ref) -> Prompt:
    """Resolve `name`, `name@alias` or `name/VERSION` to a prompt version.

    Raises:
        NotFoundError: no such prompt, alias or version.
    """
    parsed = parse_ref(ref) if isinstance(ref, str) else ref
    client = configure()
    entity = _prompt_entity(client, parsed.name)
    if entity is None:
        raise _missing_prompt(client, parsed.name)
    try:
        if parsed.alias is not None:
            pv = client.get_prompt_version_by_alias(parsed.name, parsed.alias)
        elif parsed.version is not None:
            pv = client.get_prompt_version(parsed.name, parsed.version)
        else:
            versions = list(client.search_prompt_versions(parsed.name))
            pv = max(versions, key=lambda v: int(v.version))
    except Exception as error:
        if not _is_missing(error) and not isinstance(error, ValueError):
            raise
        what = f"alias {parsed.alias!r}" if parsed.alias else f"version {parsed.version}"
        raise NotFoundError(f"prompt {parsed.name!r} has no {what}") from None
    if pv is None:
        raise NotFoundError(f"prompt {parsed.name!r} has no version matching {parsed}")
    return _to_prompt(pv)


def register_prompt(
    name: str,
    template: Template,
    commit_message: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    alias: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Prompt:
    """Register a new immutable version of prompt `name` (creating the prompt if new).

    Raises:
        RegistryError: invalid name, alias or template (syntax error with its line); a model has the name.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    check_name(name, "prompt name")
    if alias is not None:
        check_alias(alias)
    check_template(template)
    client = configure()
    try:
        pv = retry_locked(mlflow.genai.register_prompt)(
            name=name,
            template=template,
            commit_message=commit_message,
            tags=dict(tags or {}),
            model_config=dict(model_config) if model_config else None,
        )
    except MlflowException as error:
        if "same name as an existing model" in str(error):
            raise RegistryError(f"{name!r} is already the name of a model; models and prompts share names") from None
        raise RegistryError(f"cannot register prompt {name!r}: {error.message}") from None
    if alias is not None:
        try:
            set_prompt_alias(name, alias, int(pv.version), reason="registered")
        except BaseException:
            retry_locked(client.delete_prompt_version)(name, str(pv.version))
            raise
    return get_prompt(Ref(name, version=int(pv.version)))


def _prompt_ops(client: Any) -> _aliases.AliasOps:
    def get_alias(name: str, alias: str) -> int | None:
        try:
            return int(client.get_prompt_version_by_alias(name, alias).version)
        except Exception as error:
            if _is_missing(error) or isinstance(error, ValueError):
                return None
            raise

    return _aliases.AliasOps(
        kind="prompt",
        get_tags=lambda name: client.get_prompt(name).tags or {},
        set_tag=client.set_prompt_tag,
        delete_tag=client.delete_prompt_tag,
        get_alias=get_alias,
        set_alias=client.set_prompt_alias,
        delete_alias=client.delete_prompt_alias,
    )


def set_prompt_alias(name: str, alias: str, version: int | str, reason: str | None = None,
                     expected: Any = ...) -> _events.AliasEvent:
    """Point `alias` at `version` of prompt `name` and record the move, as one transaction
    (compare-and-swap against `expected` when given; see `aliases.move_alias`).

    Raises:
        NotFoundError: no such prompt or version (nothing is changed).
        AliasConflictError: the alias no longer points at `expected` (nothing is changed).
    """
    check_alias(alias)
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise RegistryError(f"version must be an integer, got {version!r}") from None
    target = get_prompt(Ref(check_name(name, "prompt name"), version=number))
    client = configure()
    return _aliases.move_alias(client, _prompt_ops(client), name, alias, target.version, reason, expected=expected)


def prompt_alias_history(name: str) -> list[_events.AliasEvent]:
    """Every recorded alias move of prompt `name`, oldest first."""
    client = configure()
    entity = _prompt_entity(client, check_name(name, "prompt name"))
    if entity is None:
        raise _missing_prompt(client, name)
    return _events.events_from_tags(entity.tags or {})


def render_prompt(ref: str | Ref | Prompt, variables: Mapping[str, Any]) -> Template:
    """Render a registry prompt strictly: text for text prompts, messages for chat prompts.

    Raises:
        NotFoundError: unknown ref. PromptRenderError: missing or unknown variables.
    """
    prompt = ref if isinstance(ref, Prompt) else get_prompt(ref)
    return prompt.render(variables)


def _as_lines(prompt: Prompt) -> list[str]:
    if isinstance(prompt.template, str):
        lines = prompt.template.splitlines()
    else:
        lines = [f"[{m['role']}] {line}" for m in prompt.template for line in m["content"].splitlines() or [""]]
    if prompt.model_config:
        lines += ["", "# model_config", *json.dumps(prompt.model_config, indent=2, sort_keys=True).splitlines()]
    return lines


def diff_prompts(ref_a: str, ref_b: str) -> str:
    """A unified diff between two prompt versions (template and model config); empty when equal."""
    a, b = get_prompt(ref_a), get_prompt(ref_b)
    return "\n".join(difflib.unified_diff(_as_lines(a), _as_lines(b), a.ref, b.ref, lineterm=""))


def search_prompts(pattern: str | None = None) -> list[Prompt]:
    """The latest version of each prompt whose name contains `pattern`, sorted by name."""
    import mlflow

    configure()
    names = sorted(p.name for p in mlflow.genai.search_prompts(max_results=1000))
    return [get_prompt(name) for name in names if not pattern or pattern in name]


def to_langchain(ref: str | Ref | Prompt):
    """A LangChain `ChatPromptTemplate` for a registry prompt (Jinja2 format, same variables).

    A text prompt becomes one user message.
    """
    from llmops.extras import require

    require("langchain_core", "LangChain export")
    from langchain_core.prompts import ChatPromptTemplate

    prompt = ref if isinstance(ref, Prompt) else get_prompt(ref)
    messages = [("user", prompt.template)] if isinstance(prompt.template, str) else [
        ("human" if m["role"] == "user" else "ai" if m["role"] == "assistant" else m["role"], m["content"])
        for m in prompt.template
    ]
    return ChatPromptTemplate.from_messages(messages, template_format="jinja2")
