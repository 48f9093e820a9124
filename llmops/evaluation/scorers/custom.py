"""Custom scorers: `type: package.module:function`, called as function(answer=, row=, expected=, **kwargs)."""

from __future__ import annotations

import importlib
from typing import Any, Optional

from pydantic import field_validator

from llmops.evaluation.scorers.base import EvalError, Sample, Scorer, ScorerOptions
from llmops.evaluation.scorers.registry import register_scorer

__all__ = ["CustomScorer"]


class CustomOptions(ScorerOptions):
    """Options of a `module:function` scorer."""

    expected: Optional[str] = None
    """An optional reference answer, a template over the row, passed as `expected`."""
    kwargs: dict[str, Any] = {}
    """Extra keyword arguments for the function."""

    @field_validator("type")
    @classmethod
    def _target(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if not module or not attr:
            raise ValueError(f"a custom scorer is `package.module:function`, not {value!r}")
        return value


@register_scorer("custom")
class CustomScorer(Scorer):
    """Calls the user's function (sync or async); its return value, or None, is the score."""

    Options = CustomOptions
    templates = ("expected",)

    def __init__(self, options: CustomOptions, judge=None):
        super().__init__(options, judge)
        module_name, _, attr = options.type.partition(":")
        try:
            self._function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise EvalError(f"custom scorer {options.type!r} cannot be loaded: {error}") from None

    async def score(self, sample: Sample) -> Optional[float]:
        expected = self.expected(sample.row)
        try:
            result = self._function(answer=sample.answer, row=sample.row, expected=expected, **self.options.kwargs)
            if hasattr(result, "__await__"):
                result = await result
            return None if result is None else float(result)
        except Exception as error:  # the user's code: name the scorer, keep the cause for --debug
            raise EvalError(f"custom scorer {self.key!r} ({self.options.type}) failed: "
                            f"{type(error).__name__}: {error}") from error
