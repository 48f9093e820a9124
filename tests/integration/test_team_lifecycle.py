"""The team lifecycle on shared stores, every step a real process (issue 12, acceptance):

register base -> two fine-tunes in parallel -> two concurrent `llmops promote` runs for different
versions (one wins, the other exits 2, the history shows one move) -> serve through the gateway
with the official `openai` client -> traces read back with `mlflow.search_traces` -> drift on the
captured traffic.

Once against `mlflow server` on PostgreSQL (`llmops+postgresql://`, the store plugin) with proxied
artifacts, once against PostgreSQL directly.
The gateway's in-process engine stands in for the fleet here; the fleet path is tests/integration/
test_vllm_fleet.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import free_port, mlflow_server, postgres_database

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = ROOT / "configs" / "finetune" / "quickstart.yaml"
CAPITALS = ROOT / "llmops" / "data" / "capitals.jsonl"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["server-proxied", "postgresql"])
def team_uri(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"lifecycle-{request.param}")
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(postgres_database())
        if request.param == "server-proxied":
            # The server runs on the llmops store plugin, as README "Team set-up" recommends; MLflow's own
            # store behind a server is tests/integration/test_team_stores.py.
            server = mlflow_server("llmops+" + database, folder / "server", artifacts="proxied")
            yield stack.enter_context(server).url, folder
        else:
            yield database, folder


def _llmops(args: list[str], env: dict, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmops", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _finish(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _suite(folder: Path) -> Path:
    rows = [json.loads(line) for line in CAPITALS.read_text().splitlines()[:8]]
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    suite = folder / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "team", "version": 1, "dataset": str(data), "id_field": "country",
        "prompt": {"messages": [{"role": "user", "content": "What is the capital of {{ country }}?"}]},
        "params": {"max_tokens": 8, "temperature": 0},
        "scorers": [{"name": "correct", "type": "exact_match", "expected": "{{ capital }}"}],
        "gate": {"primary": "correct", "margin": 0.02, "min_items": 5},
    }))
    return suite


def test_register_finetune_promote_serve_trace_drift(team_uri, tiny_model_path):
    uri, folder = team_uri
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "LLMOPS_CACHE_DIR": str(folder / "cache"),
           "OMP_NUM_THREADS": "1", "LLMOPS_ARTIFACT_ROOT": str(folder / "artifacts")}

    code, out, err = _finish(_llmops(["models", "register-base", "tiny", str(tiny_model_path)], env, folder))
    assert code == 0 and "registered tiny/1 (base" in out, err

    # Two fine-tunes at once (two trainer processes on one store), each registering a version of `team`.
    finetunes = [_llmops(["finetune", str(FINETUNE), "register.name=team", "training.epochs=4", f"training.seed={seed}",
                          f"checkpoint.dir={folder / f'ckpt-{seed}'}"], env, folder) for seed in (1, 2)]
    for process in finetunes:
        code, out, err = _finish(process)
        assert code == 0, err[-2000:]

    # Two promotions at once, for different versions, both comparing against "no holder": one wins.
    suite = _suite(folder)
    promotions = [_llmops(["promote", "team", "--version", str(v), "--to", "production", "--suite", str(suite),
                           "--force", "--reason", f"team test {v}"], env, folder) for v in (1, 2)]
    results = [_finish(p) for p in promotions]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [r[2][-1500:] for r in results]
    loser = next(err for code, _, err in results if code == 2)
    assert "error: team@production moved while this ran: it pointed at no version and now points at version" in loser
    history = _finish(_llmops(["models", "history", "team"], env, folder))[1]
    production_moves = [line for line in history.splitlines() if "production:" in line]
    assert len(production_moves) == 1, history
    winner = int(production_moves[0].split("-> ")[1].split()[0])

    # Serve team@production, ask with the openai client, capture traffic and traces.
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(json.dumps({
        "kind": "gateway", "host": "127.0.0.1", "port": port, "models": ["team@production"],
        "capture": {"enabled": True, "path": str(folder / "traffic"), "flush_interval": 0.2},
        "tracing": {"experiment": "team-gateway", "flush_interval": 0.2},
    }))
    gateway = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config)], env=env, cwd=folder)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert gateway.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        for country in ("France", "Japan", "Kenya", "Peru"):
            reply = client.chat.completions.create(model="team@production", max_tokens=8, temperature=0, messages=[
                {"role": "user", "content": f"What is the capital of {country}?"}])
            assert reply.model.startswith(f"team/{winner}") or reply.model == "team@production"
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)

    reference = folder / "reference.jsonl"
    reference.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is the capital of {row['country']}?"}]}) + "\n"
                                 for row in map(json.loads, CAPITALS.read_text().splitlines())))
    code, out, err = _finish(_llmops(["drift", "traffic", "--model", "team@production", "--reference", str(reference),
                                      "--capture-dir", str(folder / "traffic"), "--since", "1h"], env, folder))
    assert code in (0, 1), err[-2000:]  # 1 = drift found; both are answers, not failures
    assert f"4 captured requests of team/{winner} since 1h" in out, out + err

    # Traces last: against a tracking server they need the batched remote path (issue 12, item 3).
    import mlflow

    from llmops.registry.store import ensure_experiment

    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        traces = mlflow.search_traces(locations=[ensure_experiment("team-gateway")], max_results=100,
                                      return_type="list")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    assert len(traces) >= 4
