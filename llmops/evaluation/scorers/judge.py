"""The LLM judge: a model served by the same engine or gateway grades each answer against a rubric."""

from __future__ import annotations

import json
import re
from typing import Optional

from llmops.evaluation.scorers.base import EvalError, Sample, Scorer, ScorerOptions
from llmops.evaluation.scorers.registry import register_scorer

__all__ = ["LlmJudge", "JUDGE_TEMPLATE", "parse_judgment"]

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


class LlmJudgeOptions(ScorerOptions):
    """Options of `llm_judge`."""

    judge_model: str
    """The judge model ref, served by the same engine or gateway as the evaluated model."""
    rubric: str = "Is the answer correct and helpful?"
    """What the judge grades; it sees the question, the reference and the answer."""
    expected: Optional[str] = None
    """An optional reference answer, a template over the row."""


@register_scorer("llm_judge")
class LlmJudge(Scorer):
    """The judge's score in [0, 1]; an unparseable reply is unmeasured (None), never a pass or a fail."""

    Options = LlmJudgeOptions
    templates = ("expected",)

    async def score(self, sample: Sample) -> Optional[float]:
        options: LlmJudgeOptions = self.options
        if self.judge is None:
            raise EvalError(f"scorer {self.key!r}: an llm_judge needs a generator to reach its judge model")
        prompt = JUDGE_TEMPLATE.format(rubric=options.rubric, question=sample.prompt,
                                       expected=self.expected(sample.row) or "(none)", answer=sample.answer)
        return parse_judgment(await self.judge(options.judge_model, prompt))
