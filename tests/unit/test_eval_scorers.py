"""Scorers on hand-made samples, strict judge parsing, and suite validation errors."""

import asyncio

import pytest

from llmops.config import validate_data
from llmops.errors import ConfigError
from llmops.evaluation.scorers import EvalError, Sample, build_scorer, parse_judgment, scorer_options
from llmops.evaluation.suite import SuiteConfig


def score(config: dict, answer: str, row: dict | None = None, judge=None, **sample):
    scorer = build_scorer(scorer_options(config), judge)
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
    scorer = build_scorer(scorer_options({"type": "exact_match", "expected": "{{ capital }}"}))
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


def suite_data(*scorers):
    return {"name": "s", "items": [{"q": 1}], "prompt": {"template": "{{ q }}"}, "scorers": list(scorers)}


def test_each_scorer_type_has_its_own_options_with_did_you_mean(tmp_path):
    from llmops.config import load_config

    path = tmp_path / "suite.yaml"
    path.write_text("name: s\nitems: [{q: 1}]\nprompt: {template: '{{ q }}'}\nscorers:\n"
                    "  - type: exact_match\n    expected: x\n    ignore_cse: true\n"
                    "  - type: regex\n    value: '('\n"
                    "  - type: contains\n"
                    "  - type: json_valid\n    expected: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, SuiteConfig)
    text = "\n".join(caught.value.errors)
    assert f"{path}:7: scorers.0.ignore_cse: unknown key for a exact_match scorer (did you mean ignore_case?)" in text
    assert f"{path}:9: scorers.1.value: invalid regex: missing ), unterminated subpattern" in text
    assert f"{path}:10: scorers.2.value: required key is missing" in text
    assert f"{path}:12: scorers.3.expected: unknown key for a json_valid scorer (it takes: type, name)" in text


def test_missing_type_and_bad_json_schema_are_config_errors():
    with pytest.raises(ConfigError, match="scorers.0: a scorer is a mapping with a `type:` key, not str"):
        validate_data(SuiteConfig, suite_data("exact_match"), "suite.yaml")
    with pytest.raises(ConfigError, match="scorers.0.type: required key is missing"):
        validate_data(SuiteConfig, suite_data({"expected": "x"}), "suite.yaml")
    with pytest.raises(ConfigError, match="scorers.0.schema: invalid JSON schema"):
        validate_data(SuiteConfig, suite_data({"type": "json_schema", "schema": {"type": "objekt"}}), "suite.yaml")


def test_a_new_scorer_is_one_registered_class():
    from llmops.evaluation.scorers import Scorer, ScorerOptions, register_scorer, scorer_types

    class ShoutOptions(ScorerOptions):
        minimum: int = 1

    @register_scorer("test_shout")
    class Shout(Scorer):
        Options = ShoutOptions

        async def score(self, sample):
            return float(sum(c.isupper() for c in sample.answer) >= self.options.minimum)

    assert "test_shout" in scorer_types()
    suite = validate_data(SuiteConfig, suite_data({"type": "test_shout", "minimum": 2}), "suite.yaml")
    assert isinstance(suite.scorers[0], ShoutOptions) and suite.scorers[0].minimum == 2
    assert score({"type": "test_shout", "minimum": 2}, "HEllo") == 1.0
    with pytest.raises(ConfigError, match="did you mean minimum"):
        validate_data(SuiteConfig, suite_data({"type": "test_shout", "minimun": 2}), "suite.yaml")


def test_module_function_scorers_keep_working_with_kwargs(tmp_path, monkeypatch):
    (tmp_path / "my_scorers.py").write_text(
        "async def shorter_than(answer, row, expected, limit=10):\n    return float(len(answer) < limit)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert score({"type": "my_scorers:shorter_than"}, "short") == 1.0
    assert score({"type": "my_scorers:shorter_than", "kwargs": {"limit": 3}}, "short") == 0.0
    with pytest.raises(EvalError, match="cannot be loaded"):
        score({"type": "my_scorers:nope"}, "x")
    with pytest.raises(EvalError, match="custom scorer 'my_scorers:shorter_than' .* failed: TypeError: .*'limt'"):
        score({"type": "my_scorers:shorter_than", "kwargs": {"limt": 3}}, "short")
    with pytest.raises(ConfigError, match="a custom scorer is `package.module:function`"):
        validate_data(SuiteConfig, suite_data({"type": ":f"}), "suite.yaml")


def test_shipped_suites_validate():
    from pathlib import Path

    from llmops.config import validate_file

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("evals").glob("*.yaml")):
        kind, suite = validate_file(path)
        assert kind == "suite" and suite.scorers
