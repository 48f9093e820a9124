"""The scorer registry: type name -> Scorer class, and option validation against each class's model.

As in lm-evaluation-harness's `lm_eval/api/registry.py`, a scorer registers itself with a decorator
and unknown names get a "did you mean". Every module in this package is imported on first use, so
a new built-in scorer is one class in one file; `module:function` types load user code instead.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Callable, Optional

from pydantic import ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError

from llmops.evaluation.scorers.base import Scorer, ScorerOptions

__all__ = ["register_scorer", "scorer_class", "scorer_types", "validate_scorer_options", "scorer_options"]

_REGISTRY: dict[str, type[Scorer]] = {}
_LOADED = False


def register_scorer(name: str) -> Callable[[type[Scorer]], type[Scorer]]:
    """Class decorator: make `name` a scorer type (`type: name` in a suite)."""

    def add(cls: type[Scorer]) -> type[Scorer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"scorer type {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.type_name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtins() -> None:
    global _LOADED
    if not _LOADED:
        package = importlib.import_module("llmops.evaluation.scorers")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _LOADED = True


def scorer_types() -> list[str]:
    """The registered scorer type names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def scorer_class(kind: str) -> type[Scorer]:
    """The class of a scorer type; `module:function` is the custom scorer.

    Raises:
        ValueError: an unknown type, with the closest known name.
    """
    _load_builtins()
    if ":" in kind:
        return _REGISTRY["custom"]
    if kind in _REGISTRY and kind != "custom":
        return _REGISTRY[kind]
    known = [k for k in sorted(_REGISTRY) if k != "custom"]
    close = difflib.get_close_matches(kind, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)}, or module:function)"
    raise ValueError(f"unknown scorer {kind!r}{hint}")


def _option_names(model: type[ScorerOptions]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def validate_scorer_options(data: Any, info: Optional[ValidationInfo] = None) -> ScorerOptions:
    """Validate one scorer mapping against the option model of its `type` (every problem at once).

    Errors keep their key paths (so `llmops validate` reports file:line:key); an unknown key names
    the scorer type and the closest option it has.
    """
    if isinstance(data, ScorerOptions):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"a scorer is a mapping with a `type:` key, not {type(data).__name__}")
    if "type" not in data:
        raise ValidationError.from_exception_data("scorer", [{"type": "missing", "loc": ("type",), "input": data}])
    try:
        cls = scorer_class(str(data["type"]))
    except ValueError as error:
        raise ValidationError.from_exception_data(
            "scorer", [{"type": "value_error", "loc": ("type",), "input": data["type"], "ctx": {"error": error}}]) from None
    try:
        return cls.Options.model_validate(data, context=info.context if info else None)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            if item["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(item["loc"][-1]), _option_names(cls.Options), n=1)
                hint = f" (did you mean {close[0]}?)" if close else f" (it takes: {', '.join(_option_names(cls.Options))})"
                kind = cls.type_name if cls.type_name != "custom" else "custom"
                problems.append({"type": PydanticCustomError("unknown_key", "unknown key for a {kind} scorer{hint}",
                                                             {"kind": kind, "hint": hint}),
                                 "loc": item["loc"], "input": item["input"]})
            else:
                problems.append({k: item[k] for k in ("type", "loc", "input", "ctx") if k in item})
        raise ValidationError.from_exception_data("scorer", problems) from None


def scorer_options(data: dict[str, Any]) -> ScorerOptions:
    """Validate a scorer mapping outside a suite file (raises pydantic's ValidationError)."""
    return validate_scorer_options(data)
