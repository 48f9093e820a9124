"""Scorers: each turns one generated answer (and its row) into a number, or None when unmeasured.

Quality scorers return values in [0, 1]; `latency` (seconds) and `output_tokens` return raw values.
None means "could not be measured" (an unparseable judge reply): it is counted and reported, never
read as a pass or a fail. Each type is a registered class with its own option model (see
`registry`); add one by writing a `Scorer` subclass with `@register_scorer("name")` in a module
of this package.
"""

from llmops.evaluation.scorers.base import EvalError, JudgeFn, Sample, Scorer, ScorerOptions
from llmops.evaluation.scorers.judge import JUDGE_TEMPLATE, parse_judgment
from llmops.evaluation.scorers.registry import (
    register_scorer,
    scorer_class,
    scorer_options,
    scorer_types,
    validate_scorer_options,
)

__all__ = [
    "EvalError", "JudgeFn", "Sample", "Scorer", "ScorerOptions", "build_scorer", "register_scorer", "scorer_class",
    "scorer_options", "scorer_types", "validate_scorer_options", "JUDGE_TEMPLATE", "parse_judgment",
]


def build_scorer(options: ScorerOptions, judge: JudgeFn | None = None) -> Scorer:
    """Build a scorer from its validated options (custom `module:function` targets are imported here)."""
    return scorer_class(options.type)(options, judge)

