"""`llmops finetune` with `checkpoint.resume=auto` refuses a checkpoint that carries code: one `error:` line,
exit 1, and the code never runs (checkpoints load with `torch.load(weights_only=True)`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmops.cli import app

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "finetune" / "quickstart.yaml"


class _Planted:
    """Unpickling this calls Path.touch: a stand-in for code hidden in a shared checkpoint folder."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def llmops(store):
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_resume_refuses_a_checkpoint_with_a_pickled_callable(llmops, tiny_model_path, tmp_path):
    import torch

    assert llmops("models", "register-base", "tiny", tiny_model_path).exit_code == 0
    common = [QUICKSTART, "training.max_steps=6", "checkpoint.every=2", "checkpoint.keep=3", "register.enabled=false",
              f"checkpoint.dir={tmp_path / 'run'}"]
    first = llmops("finetune", *common)
    assert first.exit_code == 0, first.output
    latest = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "rng": _Planted(marker)}, latest / "rank0.pt")

    resumed = llmops("finetune", *common, "checkpoint.resume=auto")
    assert resumed.exit_code == 1
    errors = [line for line in resumed.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, resumed.output
    assert f"checkpoint.resume: refusing {latest / 'rank0.pt'}" in errors[0] and "would run code" in errors[0]
    assert "Traceback" not in resumed.output and not marker.exists()
