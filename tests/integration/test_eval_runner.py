"""Evaluation runs in-process on the gateway code with the tiny model and a real MLflow store."""

import asyncio
import json

import pytest

from llmops import registry
from llmops.evaluation.generators import LazyGenerator, in_process_generator
from llmops.evaluation.runner import load_suite, run_suite_async
from llmops.evaluation.scorers import EvalError

SUITE = """\
name: mini
version: 1
items:
  - {{country: France, capital: Paris}}
  - {{country: Japan, capital: Tokyo}}
  - {{country: Kenya, capital: Nairobi}}
id_field: country
prompt: {prompt}
model: tiny/1
params: {{max_tokens: 4, temperature: 0}}
scorers:
  - {{name: correct, type: {scorer}, expected: "{{{{ capital }}}}"}}
  - {{type: output_tokens}}
"""


def write_suite(tmp_path, prompt='{messages: [{role: user, content: "What is the capital of {{ country }}?"}]}',
                scorer="exact_match"):
    path = tmp_path / "evals" / "mini.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SUITE.format(prompt=prompt, scorer=scorer))
    return path


@pytest.fixture
def tiny_registered(store, tiny_model_path):
    return registry.register_base_model("tiny", tiny_model_path)


def run(suite, model=None, use_cache=True):
    async def main():
        generator = LazyGenerator(lambda: in_process_generator(None))
        try:
            result = await run_suite_async(suite, generator, model, use_cache=use_cache, progress=False)
        finally:
            await generator.aclose()
        return result, generator.calls

    return asyncio.run(main())


def test_rerun_is_answered_from_the_cache_with_zero_engine_calls(tiny_registered, tmp_path):
    suite = load_suite(write_suite(tmp_path))
    first, calls = run(suite)
    assert (first.generated, first.cached, calls) == (3, 0, 3)
    assert first.model_version == "tiny/1" and first.summaries["correct"].mean == 0.0  # the base knows nothing
    second, calls = run(suite)
    assert (second.generated, second.cached, calls) == (0, 3, 0)
    assert [i.answers for i in second.items] == [i.answers for i in first.items]
    assert second.summaries["output_tokens"].mean == first.summaries["output_tokens"].mean
    # a new model version is a new cache key: the same ref moved to other weights is generated again
    registry.register_base_model("tiny", tiny_registered.source)
    third, calls = run(suite, "tiny/2")
    assert third.generated == 3 and calls == 3


def test_registry_prompt_is_rendered_with_row_fields(tiny_registered, tmp_path):
    registry.register_prompt("capitals-qa", [{"role": "user", "content": "What is the capital of {{ country }}?"}],
                             alias="production")
    result, _ = run(load_suite(write_suite(tmp_path, prompt="capitals-qa@production")))
    assert result.prompt_ref == "capitals-qa/1" and len(result.items) == 3


def test_a_row_missing_a_scorer_field_fails_before_any_request(tiny_registered, tmp_path, snapshot):
    path = write_suite(tmp_path)
    path.write_text(path.read_text().replace("{country: Kenya, capital: Nairobi}", "{country: Kenya}"))
    before = snapshot()
    with pytest.raises(EvalError, match="item 3: scorer 'correct': 'capital' is undefined"):
        run(load_suite(path))
    assert snapshot() == before


def test_missing_dataset_and_unknown_model(tiny_registered, tmp_path):
    path = write_suite(tmp_path)
    text = path.read_text().split("items:")[0] + "dataset: data/missing.jsonl\nid_field" + path.read_text().split("id_field")[1]
    path.write_text(text)
    with pytest.raises(EvalError, match="dataset file .*missing.jsonl not found"):
        run(load_suite(path))
    with pytest.raises(EvalError, match="generating with 'nope@production' failed: 404"):
        run(load_suite(write_suite(tmp_path)), "nope@production")


def test_cli_writes_reports_and_mlflow_evidence(tiny_registered, tmp_path):
    from typer.testing import CliRunner

    from llmops.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "run", str(write_suite(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_version"] == "tiny/1" and summary["scorers"]["correct"]["mean"] == 0.0
    assert len((out / "items.jsonl").read_text().splitlines()) == 3
    assert "<svg" in (out / "report.html").read_text()
    tags = registry.resolve_model_ref("tiny/1").tags
    assert tags["llmops.eval.mini.correct"] == "0.0000" and "llmops.eval.mini.run_id" in tags
