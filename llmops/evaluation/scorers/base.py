"""What every scorer shares: the sample it scores, its option model, its base class, its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Optional

from llmops.config import ConfigModel
from llmops.errors import LlmopsError

__all__ = ["EvalError", "Sample", "ScorerOptions", "ReferenceOptions", "Scorer", "JudgeFn", "render_row_template"]

JudgeFn = Callable[[str, str], Awaitable[str]]
"""(judge model ref, prompt) -> reply text."""


class EvalError(LlmopsError):
    """A suite cannot run as declared (missing data, a row without a needed field, a bad scorer)."""


@dataclass
class Sample:
    """One generation to score."""

    row: dict[str, Any]
    prompt: str
    answer: str
    latency_s: float = 0.0
    output_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ScorerOptions(ConfigModel):
    """Keys every scorer takes. Each scorer type extends this with its own keys (unknown keys are errors)."""

    type: str
    """The scorer type (a registered name such as exact_match, or `module:function` for a custom scorer)."""
    name: Optional[str] = None
    """Name in reports and in the gate (default: the type)."""

    @property
    def key(self) -> str:
        """The scorer's name in results."""
        return self.name or self.type


class ReferenceOptions(ScorerOptions):
    """Options of scorers that compare the answer with a reference."""

    expected: str
    """The reference answer, a Jinja template over the dataset row, e.g. "{{ capital }}"."""


def render_row_template(template: str, row: dict[str, Any], where: str) -> str:
    """Render a Jinja template over a dataset row; a missing field is an EvalError naming it."""
    from jinja2 import UndefinedError

    from llmops.registry.prompts import compile_template

    try:
        return compile_template(template).render(**row)
    except UndefinedError as error:
        raise EvalError(f"{where}: {error.message} in the dataset row (fields: {', '.join(sorted(row))})") from None


class Scorer:
    """A configured scorer: turns one sample into a number, or None when it cannot be measured.

    Subclasses set `Options` (their pydantic option model), register with `@register_scorer(NAME)`,
    and implement `score`. Quality scorers return values in [0, 1]; `quality = False` marks raw
    measurements (seconds, tokens). `templates` names the option fields that are row templates, so
    every row is checked for the fields they need before anything is generated.
    """

    type_name: ClassVar[str] = ""
    Options: ClassVar[type[ScorerOptions]] = ScorerOptions
    quality: ClassVar[bool] = True
    templates: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: ScorerOptions, judge: Optional[JudgeFn] = None):
        self.options = options
        self.key = options.key
        self.judge = judge

    @property
    def is_quality(self) -> bool:
        """False for raw measurements (latency, output tokens)."""
        return self.quality

    def render(self, option: str, row: dict[str, Any]) -> Optional[str]:
        """An option's template rendered over the row (None when the option is unset)."""
        template = getattr(self.options, option, None)
        return None if template is None else render_row_template(template, row, f"scorer {self.key!r}")

    def expected(self, row: dict[str, Any]) -> Optional[str]:
        """The reference answer rendered from the row, for scorers that have one."""
        return self.render("expected", row)

    def check_row(self, row: dict[str, Any]) -> None:
        """Raise EvalError if the row lacks a field one of this scorer's templates needs."""
        for option in self.templates:
            self.render(option, row)

    async def score(self, sample: Sample) -> Optional[float]:
        """Score one sample."""
        raise NotImplementedError
