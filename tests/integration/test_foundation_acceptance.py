"""The foundation's acceptance sequence, run through the real `llmops` console script."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

LLMOPS = [sys.executable, "-m", "llmops"]


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded default: mlflow.db in the working directory
    result = subprocess.run([*LLMOPS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_the_documented_sequence(tmp_path):
    run("models", "create-tiny", "./tiny", cwd=tmp_path)
    assert "registered tiny/1 (base" in run("models", "register-base", "tiny", "./tiny", cwd=tmp_path).stdout
    shown = run("models", "show", "tiny/1", cwd=tmp_path).stdout
    assert "kind:" in shown and "base" in shown and str(tmp_path / "tiny") in shown and "digest = sha256:" in shown
    run("prompts", "register", "qa", "--template", "Q: {{question}} A:", "--alias", "production", cwd=tmp_path)
    assert run("prompts", "render", "qa@production", "question=Why", cwd=tmp_path).stdout == "Q: Why A:\n"
    assert "registered qa/2" in run("prompts", "register", "qa", "--template", "Question: {{question}}", cwd=tmp_path).stdout
    diff = run("prompts", "diff", "qa/1", "qa/2", cwd=tmp_path).stdout
    assert "-Q: {{question}} A:" in diff and "+Question: {{question}}" in diff
    run("models", "alias", "tiny", "staging", "1", "--reason", "test", cwd=tmp_path)
    history = run("models", "history", "tiny", cwd=tmp_path).stdout
    assert "staging: (none) -> 1" in history and "(test)" in history
    assert (tmp_path / "mlflow.db").is_file()  # the embedded store lives in the working directory

    failed = run("models", "show", "tiny/9", cwd=tmp_path, check=False)
    assert failed.returncode == 1 and failed.stderr == "error: model 'tiny' has no version 9 (latest is 1)\n"
