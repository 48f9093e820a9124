"""`llmops serve --config serving/gateway.yaml` in a folder whose store holds tiny@production answers
the official `openai` client: the acceptance path a user follows, in a real subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llmops_serve_answers_tiny_at_production(store, tiny_model_path, tmp_path):
    from llmops import registry

    registry.register_base_model("tiny", tiny_model_path)
    registry.set_model_alias("tiny", "production", 1)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", "from llmops.cli import main; main()", "serve", "--config", str(ROOT / "serving" / "gateway.yaml"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                reply = client.chat.completions.with_raw_response.create(
                    model="tiny@production", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "llmops serve did not come up"
                time.sleep(0.5)
        assert reply.headers["x-llmops-model-version"] == "tiny/1"
        assert reply.parse().choices[0].finish_reason in {"stop", "length"}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    assert process.returncode == 0, (tmp_path / "serve.log").read_text()
    import mlflow

    from llmops.registry.store import ensure_experiment

    # Shutdown flushed the trace of the request.
    traces = mlflow.search_traces(locations=[ensure_experiment("llmops-gateway")], return_type="list")
    assert len(traces) == 1 and traces[0].info.tags["llmops.model_version"] == "tiny/1"
