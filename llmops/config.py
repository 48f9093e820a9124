"""YAML configuration: loading, `key.sub=value` overrides, validation with every error at once.

Every config file llmops reads (fine-tune configs, eval suites, gateway and monitor configs) is a
pydantic model derived from `ConfigModel`: unknown keys are errors, each field's docstring is its
documentation, and relative paths resolve against the folder of the file that holds them.

    config = load_config("configs/finetune/quickstart.yaml", FinetuneConfig, ["training.lr=1e-3"])
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from llmops.errors import ConfigError

__all__ = [
    "ConfigModel",
    "ConfigPath",
    "load_yaml",
    "apply_overrides",
    "validate_data",
    "load_config",
    "detect_kind",
    "validate_file",
    "SCHEMAS",
]

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every llmops config model: unknown keys are errors; field docstrings are descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def _resolve_against_config_dir(value: Path, info: ValidationInfo) -> Path:
    base_dir = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base_dir is not None and not value.is_absolute():
        value = Path(base_dir) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_against_config_dir)]
"""A path field: relative values resolve against the folder of the config file that holds them."""


# ---------------------------------------------------------------------------------------------- YAML


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from `path`.

    Raises:
        ConfigError: the file is missing, is not valid YAML (with line and column) or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}: malformed YAML at {where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: malformed YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _key_lines(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a composed YAML document to its (1-based) line."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, value_node in enumerate(node.value):
            path = prefix + (index,)
            lines[path] = value_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    return lines


# ------------------------------------------------------------------------------------------ overrides


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `key.sub=value` override applied.

    Values are parsed as YAML scalars or flow collections (`3`, `1e-4`, `true`, `[q_proj, v_proj]`);
    intermediate mappings are created as needed.

    Raises:
        ConfigError: an override is not of the form `key=value`, or descends into a non-mapping.
    """
    import copy

    result = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {override!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw_value) if raw_value.strip() else ""
        except yaml.YAMLError:
            value = raw_value
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {override!r}: {where} is not a mapping")
            node = child
        node[parts[-1]] = value
    return result


# ------------------------------------------------------------------------------------------ validation


def _fields_at(model_cls: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The field names of the (nested) model reached by following `loc` from `model_cls`."""
    import typing

    current: Any = model_cls
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            current = field.annotation
        # Unwrap Optional[...], list[...], dict[str, ...] and Annotated[...] to the model inside.
        for _ in range(4):
            origin = typing.get_origin(current)
            if origin is None:
                break
            args = [a for a in typing.get_args(current) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            current = models[0] if models else (args[-1] if args else None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _format_validation_errors(
    error: ValidationError, model_cls: type[BaseModel], source: str, lines: dict[tuple, int]
) -> list[str]:
    messages = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        # Drop pydantic's union-branch and validator tags from the location (they are not keys).
        key_loc = tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "tagged-union")))
        key_path = ".".join(str(p) for p in key_loc) or "(top level)"
        line = lines.get(key_loc) or lines.get(key_loc[:-1])
        where = f"{source}:{line}" if line else source
        if item["type"] == "extra_forbidden":
            candidates = _fields_at(model_cls, key_loc[:-1])
            close = difflib.get_close_matches(str(key_loc[-1]), candidates, n=1)
            hint = f" (did you mean {'.'.join(map(str, key_loc[:-1] + (close[0],)))}?)" if close else ""
            messages.append(f"{where}: {key_path}: unknown key{hint}")
        elif item["type"] == "missing":
            messages.append(f"{where}: {key_path}: required key is missing")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            messages.append(f"{where}: {key_path}: {msg}")
    return messages


def validate_data(
    model_cls: type[M],
    data: dict[str, Any],
    source: str = "<config>",
    base_dir: str | Path | None = None,
    key_lines: dict[tuple, int] | None = None,
) -> M:
    """Validate `data` against `model_cls`, collecting every problem.

    Raises:
        ConfigError: with one message per problem, each naming `source`, the line and the key path.
    """
    try:
        return model_cls.model_validate(data, context={"base_dir": base_dir, "source": source})
    except ValidationError as error:
        messages = _format_validation_errors(error, model_cls, source, key_lines or {})
        summary = messages[0] if len(messages) == 1 else f"{len(messages)} problems: " + "; ".join(messages)
        raise ConfigError(summary, messages) from None


def load_config(path: str | Path, model_cls: type[M], overrides: Iterable[str] = ()) -> M:
    """Load, override and validate a config file.

    Relative paths inside the file resolve against the file's folder.

    Raises:
        ConfigError: with every problem found.
    """
    path = Path(path)
    data = apply_overrides(load_yaml(path), overrides)
    return validate_data(model_cls, data, str(path), base_dir=path.resolve().parent, key_lines=_lines_of(path))


def _lines_of(path: Path) -> dict[tuple, int]:
    try:
        return _key_lines(yaml.compose(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError):
        return {}


# ---------------------------------------------------------------------------------- validate command

SCHEMAS: dict[str, str] = {
    "finetune": "llmops.finetune.schema:FinetuneConfig",
    "suite": "llmops.evaluation.suite:SuiteConfig",
    "gateway": "llmops.gateway.config:GatewayConfig",
    "monitor": "llmops.monitor.config:MonitorConfig",
}
"""Config kinds that `llmops validate` knows, each a lazy `module:Class` target."""

# folder name or file-name prefix -> kind, used when a file has no `kind:` key
_KIND_BY_LOCATION = {
    "finetune": "finetune",
    "evals": "suite",
    "gateway": "gateway",
    "monitor": "monitor",
    "accelerate": "accelerate",
}


def _validate_accelerate_config(path: Path, data: dict[str, Any]) -> Any:
    """accelerate's own launch configs (configs/accelerate/): checked by accelerate's loader."""
    from accelerate.commands.config.config_args import ClusterConfig

    try:
        return ClusterConfig.from_yaml_file(str(path))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path}: invalid accelerate config: {error}") from None


# Kinds whose files belong to another tool, checked with that tool's own loader.
_FOREIGN_VALIDATORS = {"accelerate": _validate_accelerate_config}


def detect_kind(path: Path, data: dict[str, Any]) -> str:
    """The config kind of a file: its `kind:` key, else its folder or file name.

    Raises:
        ConfigError: the kind cannot be told, or names no known schema (with a "did you mean").
    """
    kind = data.get("kind")
    if kind is None:
        candidates = [path.stem.split(".")[0], *(p.name for p in path.resolve().parents)]
        kind = next((_KIND_BY_LOCATION[c] for c in candidates if c in _KIND_BY_LOCATION), None)
    if kind is None:
        raise ConfigError(
            f"{path}: cannot tell what kind of config this is; add a top-level `kind:` "
            f"({', '.join(sorted(SCHEMAS))})"
        )
    if kind not in SCHEMAS and kind not in _FOREIGN_VALIDATORS:
        known = sorted([*SCHEMAS, *_FOREIGN_VALIDATORS])
        close = difflib.get_close_matches(str(kind), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
        raise ConfigError(f"{path}: kind: unknown config kind {kind!r}{hint}")
    return kind


def schema_for(kind: str) -> type[ConfigModel]:
    """Import the schema class of a config kind."""
    module_name, _, attr = SCHEMAS[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(f"config kind {kind!r} is not available in this llmops build ({error.name})") from None
    return getattr(module, attr)


def validate_file(path: str | Path) -> tuple[str, Any]:
    """Validate one config file of any known kind; returns (kind, config).

    Raises:
        ConfigError: with every problem in the file.
    """
    path = Path(path)
    data = load_yaml(path)
    kind = detect_kind(path, data)
    if kind in _FOREIGN_VALIDATORS:
        return kind, _FOREIGN_VALIDATORS[kind](path, data)
    schema = schema_for(kind)
    if "kind" not in schema.model_fields:
        data.pop("kind", None)
    config = validate_data(schema, data, str(path), base_dir=path.resolve().parent, key_lines=_lines_of(path))
    return kind, config
