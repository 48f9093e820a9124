"""Scorers on hand-made samples, strict judge parsing, and suite validation errors."""

import asyncio

import pytest

from llmops.config import validate_data
from llmops.errors import ConfigError
from llmops.evaluation.scorers import EvalError, Sample, build_scorer, parse_judgment
from llmops.evaluation.suite import ScorerConfig, SuiteConfig


def score(config: dict, answer: str, row: dict | None = None, judge=None, **sample):
    scorer = build_scorer(ScorerConfig(**config), judge)
    return asyncio.run(scorer.score(Sample(row or {}, "prompt", answer, **sample)))


@pytest.mark.parametrize(
    "config, answer, row, expected",
    [
        ({"type": "exact_match", "expected": "{{ capital }}"}, " paris.\nmore text", {"capital": "Paris"}, 1.0),
        ({"type": "exact_match", "expected": "{{ capital }}"}, "Lyon", {"capital": "Paris"}, 0.0),
        ({"type": "exact_match", "expected": "{{ c }}", "ignore_case": False}, "paris", {"c": "Paris"}, 0.0),
        ({"type": "contains", "value": "{{ c }}"}, "It is Paris, I think", {"c": "paris"}, 1.0),
        ({"type": "not_contains", "value": "sorry"}, "Sorry, no", {}, 0.0),
        ({"type": "regex", "value": r"^\d{4}$"}, "1984", {}, 1.0),
        ({"type": "json_valid"}, '{"a": 1}', {}, 1.0),
        ({"type": "json_valid"}, "{a: 1}", {}, 0.0),
        ({"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}, '{"b": 1}', {}, 0.0),
        ({"type": "rouge_l", "expected": "{{ r }}"}, "the cat sat", {"r": "the cat sat"}, 1.0),
        ({"type": "chrf", "expected": "{{ r }}"}, "the cat sat", {"r": "the cat sat"}, 1.0),
    ],
)
def test_builtin_scorers(config, answer, row, expected):
    assert score(config, answer, row) == pytest.approx(expected)


def test_raw_measurements():
    assert score({"type": "latency"}, "x", latency_s=0.25) == 0.25
    assert score({"type": "output_tokens"}, "x", output_tokens=7) == 7.0


@pytest.mark.parametrize(
    "reply, expected",
    [('{"score": 0.8, "reason": "ok"}', 0.8), ('Sure! {"score": 1}', 1.0), ("score: 5", None),
     ('{"score": 7}', None), ('{"score": "high"}', None), ('{"score": true}', None), ("", None)],
)
def test_judge_replies_are_parsed_strictly(reply, expected):
    assert parse_judgment(reply) == expected


def test_unparseable_judge_reply_is_unmeasured_not_a_score():
    async def judge(model, prompt):
        assert "Reference: Paris" in prompt and model == "judge@production"
        return "I think it's fine"

    config = {"type": "llm_judge", "judge_model": "judge@production", "expected": "{{ c }}"}
    assert score(config, "Paris", {"c": "Paris"}, judge=judge) is None


def test_a_row_without_the_needed_field_names_it():
    scorer = build_scorer(ScorerConfig(type="exact_match", expected="{{ capital }}"))
    with pytest.raises(EvalError, match="'capital' is undefined"):
        scorer.check_row({"country": "France"})


def test_unknown_scorer_has_a_did_you_mean():
    data = {"name": "s", "items": [{"q": 1}], "prompt": {"template": "{{ q }}"}, "scorers": [{"type": "exact_mach", "expected": "x"}]}
    with pytest.raises(ConfigError, match="unknown scorer 'exact_mach' \\(did you mean exact_match\\?\\)"):
        validate_data(SuiteConfig, data, "suite.yaml")


def test_gate_must_name_a_defined_scorer():
    data = {"name": "s", "items": [{"q": 1}], "prompt": {"template": "{{ q }}"},
            "scorers": [{"type": "exact_match", "name": "correct", "expected": "x"}], "gate": {"primary": "corect"}}
    with pytest.raises(ConfigError, match="did you mean correct"):
        validate_data(SuiteConfig, data, "suite.yaml")
