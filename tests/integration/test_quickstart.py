"""`llmops quickstart`: the whole lifecycle through the real console script, twice, and after a SIGINT."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def quickstart(workdir: Path, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "llmops", "quickstart", "--workdir", str(workdir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    return out


def aliases(workdir: Path) -> dict[str, int]:
    import mlflow

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the registry of an earlier test
    try:
        return dict(client.get_registered_model("quickstart").aliases)
    except mlflow.exceptions.MlflowException:
        return {}


@pytest.mark.slow
def test_quickstart_runs_twice_in_one_workdir(tmp_path):
    first = finish(quickstart(tmp_path / "qs"))
    assert "fine-tuned   quickstart/1" in first
    assert "gate         pass; promoted to quickstart@production" in first
    assert "exact match  0.00 (base) -> 1.00 (adapter)" in first or "-> 0.9" in first
    assert "A: Paris" in first and "token JS divergence" in first
    assert (tmp_path / "qs" / "reports" / "eval" / "report.html").is_file()
    second = finish(quickstart(tmp_path / "qs"))
    assert "fine-tuned   quickstart/2" in second
    assert aliases(tmp_path / "qs")["candidate"] == 2


@pytest.mark.slow
def test_sigint_during_the_finetune_leaves_no_alias_on_an_unfinished_version(tmp_path):
    workdir = tmp_path / "qs"
    process = quickstart(workdir)
    output = ""
    deadline = time.monotonic() + 300
    while "done prompt" not in output:  # the fine-tune starts right after the prompt step
        assert time.monotonic() < deadline and process.poll() is None, output
        output += process.stdout.readline()
    time.sleep(1)  # inside the fine-tune step, which takes several seconds even on a fast machine
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert aliases(workdir) == {}  # nothing was registered, so no alias points anywhere
    assert "promoted to quickstart@production" in finish(quickstart(workdir))


@pytest.mark.slow
def test_quickstart_on_a_tracking_server_names_its_ui(tmp_path):
    """`MLFLOW_TRACKING_URI=http://…`: the base registers from a manifest run, the adapter goes through the
    proxied artifact store, and the summary points at the server, not at a local SQLite file."""
    from tests.services import mlflow_server

    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server", artifacts="proxied") as server:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1",
               "MLFLOW_TRACKING_URI": server.url, "LLMOPS_CACHE_DIR": str(tmp_path / "cache")}
        process = subprocess.run([sys.executable, "-m", "llmops", "quickstart", "--workdir", str(tmp_path / "qs")],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        out = process.stdout
        assert process.returncode == 0, out
        assert "gate         pass; promoted to quickstart@production" in out
        assert f"registry: the MLflow tracking server at {server.url}" in out
        assert f"browse runs, traces and the registry: open {server.url} in a browser" in out
        assert "sqlite" not in out and not (tmp_path / "qs" / "mlflow.db").exists()
        assert any((tmp_path / "cache" / "quickstart").iterdir()), "the adapter came through the artifact cache"
