"""`llmops lineage` and `llmops reproduce` on the real quickstart: the chain from a served answer (its
x-request-id or trace id) back to base, data, config, prompt, run and gate evidence; a bit-exact rebuild
of quickstart/1; refusals that name the digest that differs and what the file holds now."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CAPITALS = ROOT / "llmops" / "data" / "capitals.jsonl"


def _env(workdir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="250", PYTHONUNBUFFERED="1",
               MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def llmops(workdir: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    """The real console entry point, in `workdir` on its store."""
    done = subprocess.run([sys.executable, "-m", "llmops", *map(str, args)], cwd=workdir, env=_env(workdir),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == expect, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """A finished `llmops quickstart` (quickstart/1 promoted to production through the gate)."""
    workdir = tmp_path_factory.mktemp("lineage") / "qs"
    env = {k: v for k, v in _env(workdir).items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "llmops", "quickstart", "--workdir", str(workdir)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted to quickstart@production" in done.stdout
    return workdir


@pytest.fixture
def on_store(quickstart, monkeypatch):
    """This process pointed at the quickstart's store."""
    monkeypatch.chdir(quickstart)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{quickstart / 'mlflow.db'}")
    return quickstart


@pytest.mark.slow
def test_lineage_of_production_shows_the_whole_chain(on_store):
    from llmops.registry import resolve_model_ref
    from llmops.registry.digest import file_digest

    data = json.loads(llmops(on_store, "lineage", "quickstart@production", "--json").stdout)
    version, base = resolve_model_ref("quickstart/1"), resolve_model_ref("tiny/1")
    assert data["model"]["ref"] == "quickstart/1" and "production" in data["model"]["aliases"]
    assert data["base"]["ref"] == "tiny/1" and data["base"]["digest"] == base.digest
    assert data["base"]["state"] == "unchanged" and data["base"]["source"] == str(on_store / "tiny")
    train = data["datasets"]["train"]
    assert train["path"] == str(CAPITALS) and train["digest"] == file_digest(CAPITALS) and train["rows"] == 100
    assert train["state"] == "unchanged" and train["dvc"] is None
    assert data["config"]["digest"] == version.tags["llmops.config_digest"]
    assert "seed: 0" in data["config"]["yaml"] and data["config"]["summary"]["lr"] == 0.005
    assert data["prompt"]["ref"] == "capitals-qa/1" and "{{ country }}" in data["prompt"]["template"]
    run = data["run"]
    assert run["run_id"] == version.run_id and run["status"] == "FINISHED" and run["metrics"]["loss"] < 0.5
    assert run["git_commit"] and run["train_steps"] == "300"
    production = next(e for e in data["evidence"] if e["alias"] == "production")
    assert production["evidence"]["verdict"] == "pass" and production["evidence"]["suite"] == "quickstart"
    gate_run = production["eval_runs"]["candidate"]
    assert gate_run["metrics"]["correct.mean"] >= 0.9 and gate_run["verdict"] == "pass"
    assert [(e["alias"], e["to_version"]) for e in data["alias_history"]] == [("candidate", 1), ("production", 1)]

    tree = llmops(on_store, "lineage", "quickstart@production").stdout
    for shown in ("quickstart/1", f"base  tiny/1  {base.digest[:19]}", str(CAPITALS), train["digest"][:19],
                  "prompt  capitals-qa/1", f"fine-tune run  {version.run_id}", "gate pass on suite quickstart",
                  "correct.mean", "alias history", "production: (none) -> 1"):
        assert shown in tree, shown


@pytest.mark.slow
def test_request_id_and_trace_id_lead_to_the_serving_version(on_store):
    from openai import OpenAI

    from llmops.gateway.app import create_app
    from llmops.gateway.config import GatewayConfig
    from llmops.gateway.server import BackgroundServer

    with BackgroundServer(create_app(GatewayConfig())) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="test")
        raw = client.chat.completions.with_raw_response.create(
            model="quickstart@production", messages=[], max_tokens=4, temperature=0,
            extra_body={"prompt": "capitals-qa@production", "variables": {"country": "Chile"}})
        chosen = client.chat.completions.with_raw_response.create(
            model="quickstart@production", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            extra_headers={"x-request-id": "client-chosen-id-42"})
    request_id, trace_id = raw.headers["x-request-id"], raw.headers["x-llmops-trace-id"]
    by_request = json.loads(llmops(on_store, "lineage", "--request-id", request_id, "--json").stdout)
    assert by_request["model"]["ref"] == "quickstart/1"
    assert by_request["trace"]["trace_id"] == trace_id and by_request["trace"]["prompt_version"] == "capitals-qa/1"
    assert by_request["base"]["digest"] and by_request["datasets"]["train"]["digest"]
    by_trace = json.loads(llmops(on_store, "lineage", "--trace-id", trace_id, "--json").stdout)
    assert by_trace["model"]["ref"] == "quickstart/1" and by_trace["trace"]["request_id"] == request_id
    assert chosen.headers["x-request-id"] == "client-chosen-id-42"
    tree = llmops(on_store, "lineage", "--request-id", "client-chosen-id-42").stdout
    assert "served answer" in tree and "quickstart@production -> quickstart/1" in tree

    missing = llmops(on_store, "lineage", "--request-id", "no-such-request", expect=1)
    assert missing.stderr.startswith("error: no trace has request id 'no-such-request'")
    hostile = llmops(on_store, "lineage", "--request-id", "x' OR '1'='1", expect=1)
    assert "invalid request id" in hostile.stderr and "Traceback" not in hostile.stderr
    both = llmops(on_store, "lineage", "quickstart/1", "--trace-id", trace_id, expect=1)
    assert "exactly one of" in both.stderr


@pytest.mark.slow
def test_reproduce_quickstart_is_bit_exact_and_tagged(on_store):
    from llmops.registry import resolve_model_ref

    out = llmops(on_store, "reproduce", "quickstart/1").stdout
    assert "reproduced quickstart/1 as quickstart/2" in out
    assert "verdict     bit-exact" in out and "loss curve identical over 300 logged steps" in out
    assert "adapter_model.safetensors identical" in out
    assert re.search(r"correct\s+(\d\.\d{4}) -> \1  \(Δ \+0\.0000, primary score of suite quickstart v1", out), out
    again = resolve_model_ref("quickstart/2")
    assert again.tags["llmops.reproduces"] == "quickstart/1" and again.aliases == ()
    assert again.tags["llmops.prompt_version"] == "capitals-qa/1" and again.base == "tiny/1"
    assert again.tags["llmops.data.train.digest"] == resolve_model_ref("quickstart/1").tags.get(
        "llmops.data.train.digest", again.tags["llmops.data.train.digest"])
    assert resolve_model_ref("quickstart@production").version == 1  # a reproduction moves no alias
    shown = json.loads(llmops(on_store, "lineage", "quickstart/2", "--json").stdout)
    assert shown["model"]["reproduces"] == "quickstart/1"


# ------------------------------------------------------------------ refusals (no quickstart needed)


def _config(folder: Path, train: Path, base: str = "tiny", steps: int = 6) -> Path:
    import yaml

    config = {
        "name": "lin", "model": {"base": base},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"train": str(train), "template": "What is the capital of {{ country }}?",
                 "completion_field": "capital", "loss_on": "completion", "max_seq_len": 64},
        "training": {"max_steps": steps, "lr": 5e-3, "batch_size": 8, "seed": 3, "cpu_threads": 1},
        "register": {"name": "lin", "alias": "candidate"},
        "checkpoint": {"dir": str(folder / "run")},
    }
    path = folder / "finetune.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _versions(name: str) -> list[int]:
    from llmops.registry.store import configure

    return sorted(int(v.version) for v in configure().search_model_versions(f"name='{name}'"))


def test_an_edited_dataset_or_base_is_refused_naming_both_digests(store, tiny_model_path, tmp_path):
    from typer.testing import CliRunner

    from llmops.cli import app
    from llmops.finetune.job import run_finetune
    from llmops.registry import register_base_model
    from llmops.registry.digest import file_digest, tree_digest

    base = tmp_path / "base"
    shutil.copytree(tiny_model_path, base)
    register_base_model("tiny", base)
    train = tmp_path / "train.jsonl"
    shutil.copy(CAPITALS, train)
    run_finetune(_config(tmp_path, train))
    recorded = file_digest(train)
    lines = train.read_text().splitlines()
    lines[5] = lines[5].replace('"capital": "', '"capital": "X')  # one row edited
    train.write_text("\n".join(lines) + "\n")

    runner = CliRunner()
    refused = runner.invoke(app, ["reproduce", "lin/1", "--out", str(tmp_path / "again")])
    assert refused.exit_code == 1
    message = refused.output.strip().splitlines()[-1]
    assert message.startswith("error: dataset changed: lin/1 was trained on data.train")
    assert recorded in message and file_digest(train) in message and "100 rows" in message
    assert _versions("lin") == [1] and not (tmp_path / "again" / "adapter").exists()

    shutil.copy(CAPITALS, train)
    registered = tree_digest(base)
    with (base / "config.json").open("a") as handle:
        handle.write("\n")
    refused = runner.invoke(app, ["reproduce", "lin/1", "--out", str(tmp_path / "again2")])
    assert refused.exit_code == 1
    assert f"base changed: lin/1 was trained on tiny/1 with digest {registered}" in refused.output
    assert tree_digest(base) in refused.output and _versions("lin") == [1]

    not_adapter = runner.invoke(app, ["reproduce", "tiny/1"])
    assert not_adapter.exit_code == 1 and "is a base model" in not_adapter.output


# ------------------------------------------------------------------------------- DVC-tracked data


def _run(folder: Path, *command: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    done = subprocess.run(list(command), cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _dvc(folder: Path, *args: str) -> str:
    return _run(folder, sys.executable, "-m", "dvc", *args)


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    """A Git + DVC repository whose data/capitals.jsonl is `dvc add`ed, pushed to a local remote, committed."""
    pytest.importorskip("dvc")
    repo, remote = tmp_path / "repo", tmp_path / "dvc-remote"
    (repo / "data").mkdir(parents=True)
    remote.mkdir()
    _run(repo, "git", "init", "-q")
    _dvc(repo, "init", "-q")
    shutil.copy(CAPITALS, repo / "data" / "capitals.jsonl")
    _dvc(repo, "add", "-q", "data/capitals.jsonl")
    _dvc(repo, "remote", "add", "-d", "storage", str(remote))
    _dvc(repo, "push", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "data v1")
    return repo


def test_dvc_tracked_dataset_is_recorded_fetched_back_and_checked(store, tiny_model_path, dvc_repo, tmp_path):
    from llmops.finetune.job import run_finetune
    from llmops.lineage import LineageError
    from llmops.lineage.dvc import md5_of
    from llmops.lineage.render import lineage_tree
    from llmops.lineage.reproduce import reproduce_version
    from llmops.lineage.walk import walk_lineage
    from llmops.registry import register_base_model, resolve_model_ref

    register_base_model("tiny", tiny_model_path)
    train = dvc_repo / "data" / "capitals.jsonl"
    md5 = md5_of(train)
    run_finetune(_config(tmp_path, train))
    head = _run(dvc_repo, "git", "rev-parse", "HEAD").strip()
    tags = resolve_model_ref("lin/1").tags
    assert tags["llmops.data.train.dvc.md5"] == md5 and tags["llmops.data.train.dvc.rev"] == head
    assert tags["llmops.data.train.dvc.pointer"] == "data/capitals.jsonl.dvc"
    assert tags["llmops.data.train.dvc.remote"] == f"storage {tmp_path / 'dvc-remote'}"
    lineage = walk_lineage("lin/1")
    assert lineage["datasets"]["train"]["dvc"]["md5"] == md5 and lineage["datasets"]["train"]["state"] == "unchanged"
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(lineage_tree(lineage))
    assert f"DVC  md5 {md5}  pointer data/capitals.jsonl.dvc" in console.export_text()

    # The local copy and the cache are gone: DVC pulls the recorded version back from the remote.
    train.unlink()
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    report = reproduce_version("lin/1", out=tmp_path / "r1")
    data_check = next(c for c in report.checks if c.name == "data.train")
    assert "dvc pull from remote storage" in data_check.how and md5_of(train) == md5
    assert report.reproduction == "lin/2" and report.verdict == "bit-exact" and report.weights_identical

    # Edited in place (the pointer still names the recorded version): refused, with the way back.
    train.write_text(train.read_text().replace('"capital": "Paris"', '"capital": "Lyon"'))
    with pytest.raises(LineageError) as refused:
        reproduce_version("lin/1", out=tmp_path / "r2")
    message = str(refused.value)
    assert message.startswith("dataset changed: lin/1 was trained on data.train")
    assert tags["llmops.data.train.digest"] in message and "dvc checkout data/capitals.jsonl.dvc" in message
    assert not (tmp_path / "r2" / "adapter").exists()

    # The edit became data v2 (dvc add + commit): the recorded v1 is read at its Git revision instead.
    _dvc(dvc_repo, "add", "-q", "data/capitals.jsonl")
    _run(dvc_repo, "git", "commit", "-qam", "data v2")
    edited = md5_of(train)
    report = reproduce_version("lin/1", out=tmp_path / "r3")
    data_check = next(c for c in report.checks if c.name == "data.train")
    assert f"dvc.api.read at revision {head[:12]}" in data_check.how and report.verdict == "bit-exact"
    assert md5_of(train) == edited  # the workspace keeps v2
    rebuilt = resolve_model_ref(report.reproduction).tags
    assert rebuilt["llmops.data.train.dvc.md5"] == md5 and rebuilt["llmops.data.train.dvc.rev"] == head


def test_a_dvc_stage_output_is_recognised_through_dvc_lock(dvc_repo):
    from llmops.lineage.dvc import find_dvc_dataset, md5_of

    _dvc(dvc_repo, "stage", "add", "-q", "-n", "subset", "-d", "data/capitals.jsonl", "-o", "data/subset.jsonl",
         "head -n 20 data/capitals.jsonl > data/subset.jsonl")
    _dvc(dvc_repo, "repro", "-q")
    found = find_dvc_dataset(dvc_repo / "data" / "subset.jsonl")
    assert found is not None and found.pointer == "dvc.lock" and found.md5 == md5_of(dvc_repo / "data" / "subset.jsonl")
    assert found.rev is None  # dvc.lock is not committed yet, so no revision holds this version
    assert find_dvc_dataset(dvc_repo / "dvc.yaml") is None  # in the repository, but not a DVC output


# --------------------------------------------------------------------------- a team tracking server


@pytest.fixture(scope="module")
def team_store(tiny_model_path, tmp_path_factory):
    """An `mlflow server` (proxied artifacts) holding tiny/1 and lin/1, and one gateway request to
    lin@candidate with x-request-id `team-request-7`. Yields (folder, gateway, raw response)."""
    from openai import OpenAI

    from llmops.finetune.job import run_finetune
    from llmops.gateway.app import create_app
    from llmops.gateway.config import GatewayConfig
    from llmops.gateway.server import BackgroundServer
    from tests.services import mlflow_server

    folder = tmp_path_factory.mktemp("team")
    patch = pytest.MonkeyPatch()
    with mlflow_server(f"sqlite:///{folder / 'server.db'}", folder / "server") as server:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", server.url)
        try:
            from llmops.registry import register_base_model

            register_base_model("tiny", tiny_model_path)  # a manifest run on a server (team mode)
            train = folder / "train.jsonl"
            shutil.copy(CAPITALS, train)
            run_finetune(_config(folder, train))
            app = create_app(GatewayConfig())
            with BackgroundServer(app) as gateway:
                client = OpenAI(base_url=f"{gateway.url}/v1", api_key="test")
                raw = client.chat.completions.with_raw_response.create(
                    model="lin@candidate", messages=[{"role": "user", "content": "What is the capital of Peru?"}],
                    max_tokens=4, extra_headers={"x-request-id": "team-request-7"})
            yield folder, app, raw
        finally:
            patch.undo()


def test_lineage_and_reproduce_through_an_mlflow_server(team_store):
    """The walk and the rebuild on `mlflow server`: run artifacts (config, fingerprint, adapter weights)
    download through the server's proxied artifact API."""
    from llmops.lineage.reproduce import reproduce_version
    from llmops.lineage.walk import walk_lineage

    folder = team_store[0]
    lineage = walk_lineage("lin@candidate")
    assert lineage["model"]["ref"] == "lin/1" and lineage["base"]["ref"] == "tiny/1"
    assert lineage["base"]["state"] == "unchanged" and lineage["datasets"]["train"]["state"] == "unchanged"
    assert "seed: 3" in lineage["config"]["yaml"] and lineage["run"]["status"] == "FINISHED"
    assert lineage["datasets"]["train"]["examples"] == 100 and not lineage["warnings"]
    report = reproduce_version("lin/1", out=folder / "again")
    assert report.reproduction == "lin/2" and report.verdict == "bit-exact" and report.weights_identical


def test_request_id_through_an_mlflow_server(team_store):
    """A trace stored through the server's API is found by its request id (trace tag `llmops.request_id`)."""
    from llmops.lineage.walk import walk_lineage

    _, gateway, raw = team_store
    assert gateway.tracer.stats.written >= 1 and gateway.tracer.stats.failed == 0
    lineage = walk_lineage(request_id="team-request-7")
    assert lineage["trace"]["trace_id"] == raw.headers["x-llmops-trace-id"] and lineage["model"]["ref"] == "lin/1"


def test_walk_from_a_request_id_on_postgresql(tiny_model_path, tmp_path, monkeypatch):
    """`postgresql://` directly: the gateway bulk-writes traces into PostgreSQL and the request id (the
    trace's client_request_id) leads to the version, its stored config and its data."""
    pytest.importorskip("psycopg")
    from openai import OpenAI

    from llmops.finetune.job import run_finetune
    from llmops.gateway.app import create_app
    from llmops.gateway.config import GatewayConfig
    from llmops.gateway.server import BackgroundServer
    from llmops.lineage.walk import walk_lineage
    from llmops.registry import register_base_model
    from tests.services import postgres_database

    with postgres_database() as uri:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.replace("postgresql://", "postgresql+psycopg://"))
        register_base_model("tiny", tiny_model_path)
        train = tmp_path / "train.jsonl"
        shutil.copy(CAPITALS, train)
        run_finetune(_config(tmp_path, train))
        with BackgroundServer(create_app(GatewayConfig())) as gateway:
            client = OpenAI(base_url=f"{gateway.url}/v1", api_key="test")
            raw = client.chat.completions.with_raw_response.create(
                model="lin@candidate", messages=[{"role": "user", "content": "What is the capital of Peru?"}],
                max_tokens=4, extra_headers={"x-request-id": "pg-request-1"})
        lineage = walk_lineage(request_id="pg-request-1")
        assert lineage["trace"]["trace_id"] == raw.headers["x-llmops-trace-id"]
        assert lineage["model"]["ref"] == "lin/1" and lineage["base"]["state"] == "unchanged"
        assert "seed: 3" in lineage["config"]["yaml"] and lineage["datasets"]["train"]["state"] == "unchanged"
        assert [e["alias"] for e in lineage["alias_history"]] == ["candidate"] and not lineage["warnings"]
