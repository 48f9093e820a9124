"""String scorers: exact match, contains / not contains, regex."""

from __future__ import annotations

import re
import string
from typing import Optional

from pydantic import field_validator

from llmops.evaluation.scorers.base import ReferenceOptions, Sample, Scorer, ScorerOptions
from llmops.evaluation.scorers.registry import register_scorer

__all__ = ["ExactMatch", "Contains", "NotContains", "Regex"]


def first_line(text: str) -> str:
    """The first non-empty line of `text` ("" when there is none)."""
    return next((line for line in text.splitlines() if line.strip()), "")


class ExactMatchOptions(ReferenceOptions):
    """Options of `exact_match`."""

    ignore_case: bool = True
    """Compare case-insensitively."""
    ignore_punctuation: bool = True
    """Drop punctuation before comparing."""
    strip: bool = True
    """Trim and collapse white space."""
    first_line: bool = True
    """Look at the first non-empty line of the answer only."""


@register_scorer("exact_match")
class ExactMatch(Scorer):
    """1 when the normalised answer equals the normalised reference, else 0."""

    Options = ExactMatchOptions
    templates = ("expected",)

    def _normalise(self, text: str) -> str:
        options: ExactMatchOptions = self.options
        if options.first_line:
            text = first_line(text)
        if options.ignore_punctuation:
            text = text.translate(str.maketrans("", "", string.punctuation))
        if options.ignore_case:
            text = text.casefold()
        return " ".join(text.split()) if options.strip else text

    async def score(self, sample: Sample) -> Optional[float]:
        return float(self._normalise(sample.answer) == self._normalise(self.expected(sample.row) or ""))


class ContainsOptions(ScorerOptions):
    """Options of `contains` and `not_contains`."""

    value: str
    """The text to look for, a template over the row ("{{ capital }}") or a fixed string."""
    ignore_case: bool = True
    """Compare case-insensitively."""
    first_line: bool = True
    """Look at the first non-empty line of the answer only."""


@register_scorer("contains")
class Contains(Scorer):
    """1 when the answer contains `value`, else 0."""

    Options = ContainsOptions
    templates = ("value",)
    present = 1.0

    async def score(self, sample: Sample) -> Optional[float]:
        options: ContainsOptions = self.options
        needle = self.render("value", sample.row) or ""
        haystack = first_line(sample.answer) if options.first_line else sample.answer
        if options.ignore_case:
            needle, haystack = needle.casefold(), haystack.casefold()
        return self.present if needle in haystack else 1.0 - self.present


@register_scorer("not_contains")
class NotContains(Contains):
    """1 when the answer does not contain `value` (a refusal phrase, a leaked secret), else 0."""

    present = 0.0


class RegexOptions(ScorerOptions):
    """Options of `regex` (the pattern is checked when the suite is validated)."""

    value: str
    """The pattern (Python `re` syntax), searched anywhere in the answer."""
    ignore_case: bool = True
    """Match case-insensitively."""

    @field_validator("value")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"invalid regex: {error}") from None
        return pattern


@register_scorer("regex")
class Regex(Scorer):
    """1 when the pattern matches somewhere in the answer, else 0."""

    Options = RegexOptions

    def __init__(self, options: RegexOptions, judge=None):
        super().__init__(options, judge)
        self._pattern = re.compile(options.value, re.IGNORECASE if options.ignore_case else 0)

    async def score(self, sample: Sample) -> Optional[float]:
        return float(self._pattern.search(sample.answer) is not None)
