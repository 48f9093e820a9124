"""Fine-tune -> evaluate -> promote through the gate, on the tiny model and a real store.

This is the evaluation issue's acceptance: the base scores near 0, the quickstart adapter high, the
adapter is promoted, and a deliberately weak adapter is rejected with the alias left where it was.
"""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmops import registry
from llmops.cli import app
from llmops.evaluation.runner import load_suite, run_suite
from llmops.finetune.job import run_finetune

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = ROOT / "configs" / "finetune" / "quickstart.yaml"
SUITE = ROOT / "evals" / "quickstart.yaml"


@pytest.fixture
def trained(store, tiny_model_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    registry.register_base_model("tiny", tiny_model_path)
    good = run_finetune(FINETUNE, ["checkpoint.dir=" + str(store.parent / "ckpt-good")])
    weak = run_finetune(FINETUNE, ["training.max_steps=3", "checkpoint.dir=" + str(store.parent / "ckpt-weak")])
    return good.version, weak.version


@pytest.mark.slow
def test_finetune_eval_promote(trained, tmp_path, snapshot):
    good, weak = trained
    assert (good, weak) == ("quickstart/1", "quickstart/2")
    suite = load_suite(SUITE)
    base = run_suite(suite, "tiny/1", progress=False).summaries["correct"].mean
    adapter = run_suite(suite, good, progress=False).summaries["correct"].mean
    assert base <= 0.05 and adapter >= 0.8, (base, adapter)

    runner = CliRunner()
    passed = runner.invoke(app, ["promote", "quickstart", "--version", "1", "--to", "production", "--suite", str(SUITE)])
    assert passed.exit_code == 0, passed.stdout + passed.stderr
    assert "gate: pass" in passed.stdout and "quickstart@production -> 1" in passed.stdout
    assert registry.resolve_model_ref("quickstart@production").version == 1

    rejected = runner.invoke(app, ["promote", "quickstart", "--version", "2", "--to", "production", "--suite",
                                   str(SUITE), "--out", str(tmp_path / "gate")])
    assert rejected.exit_code == 1, rejected.stdout + rejected.stderr
    assert "gate: fail" in rejected.stdout and "quickstart@production unchanged" in rejected.stdout
    assert registry.resolve_model_ref("quickstart@production").version == 1
    moves = [(e.alias, e.to_version) for e in registry.alias_history("quickstart")]
    assert ("production", 2) not in moves and ("production", 1) in moves
    assert "Gate: fail" in (tmp_path / "gate" / "report.html").read_text()

    forced = runner.invoke(app, ["promote", "quickstart", "--version", "2", "--to", "production", "--suite",
                                 str(SUITE), "--force"])
    assert forced.exit_code == 1 and "--force needs --reason" in forced.stderr
