"""One traffic dataset for a fleet: two `llmops serve` processes capture into one `s3://` dataset on a real
S3-compatible server (SeaweedFS), and `llmops drift traffic` reads the records of both.

The gateways run on the upstream backend in front of the replica of `benchmarks/_fake_upstream.py`,
which answers with vLLM's `prompt_token_ids` / `token_ids` when asked for them (`return_token_ids`), so
the records carry token ids as they would from a vLLM fleet. Credentials and the endpoint reach pyarrow
through the standard AWS variables, as they would on a serving host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import free_port, s3_server, stop_process as _stop, wait_http as _wait

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ["What is the capital of Peru?", "What is the capital of Chile?", "What is the capital of Kenya?"]




@pytest.fixture(scope="module")
def fleet_on_s3(tiny_store, tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("capture-s3")
    with tiny_store(folder) as db, s3_server(folder / "s3") as s3:
        replica_port = free_port()
        replica = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "_fake_upstream.py"),
                                    str(replica_port), "20", "5"])
        dataset = s3.uri("fleet/traffic")
        config = folder / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "kind": "gateway", "models": ["tiny@production"],
            "engine": {"kind": "upstream", "upstream": {"urls": [f"http://127.0.0.1:{replica_port}"]}},
            "tracing": {"enabled": False},
            "capture": {"enabled": True, "path": dataset, "flush_interval": 0.2},
        }))
        env = {**os.environ, **s3.env, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(ROOT)}
        gateways: list[tuple[str, subprocess.Popen]] = []
        try:
            _wait(f"http://127.0.0.1:{replica_port}/health", replica)
            for _ in range(2):
                port = free_port()
                log = open(folder / f"gateway-{port}.log", "wb")
                process = subprocess.Popen(
                    [sys.executable, "-m", "llmops", "serve", "--config", str(config), "--port", str(port)],
                    cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
                gateways.append((f"http://127.0.0.1:{port}", process))
            for url, process in gateways:
                _wait(url + "/health", process)
            yield {"gateways": gateways, "dataset": dataset, "env": env, "folder": folder, "s3": s3}
        finally:
            for _, process in gateways:
                _stop(process)
            _stop(replica)


def test_two_gateways_capture_into_one_s3_dataset_that_drift_reads(fleet_on_s3):
    from llmops import traffic

    sent: dict[str, set[str]] = {}
    for url, _ in fleet_on_s3["gateways"]:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        ids = set()
        for question in QUESTIONS:
            raw = client.chat.completions.with_raw_response.create(
                model="tiny@production", messages=[{"role": "user", "content": question}], max_tokens=5)
            ids.add(raw.headers["x-request-id"])
        sent[url] = ids
    for _, process in fleet_on_s3["gateways"]:
        _stop(process)  # flushes what is still queued

    env_before = dict(os.environ)
    os.environ.update(fleet_on_s3["s3"].env)
    try:
        records = traffic.read(model="tiny", root=fleet_on_s3["dataset"])
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(fleet_on_s3["dataset"])
        names = [info.base_name for info in filesystem.get_file_info(fs.FileSelector(path, recursive=True))
                 if info.base_name.endswith(".parquet")]
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert {r["request_id"] for r in records} == set().union(*sent.values())
    assert all(r["prompt_token_ids"] == [1, 2, 3, 4, 5] and r["model_version"] == "tiny/1" for r in records)
    pids = {name.split("-")[3] for name in names}  # part-STAMP-HOST-PID-RANDOM-SEQ.parquet
    assert len(pids) == 2 and not any(name.endswith(".tmp") for name in names)

    reference = fleet_on_s3["folder"] / "reference.jsonl"
    reference.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUESTIONS))
    result = subprocess.run(
        [sys.executable, "-m", "llmops", "drift", "traffic", "--model", "tiny@production", "--reference", str(reference),
         "--capture-dir", fleet_on_s3["dataset"], "--since", "1h", "--permutations", "20", "--no-mlflow",
         "--out", str(fleet_on_s3["folder"] / "drift")],
        cwd=fleet_on_s3["folder"], env=fleet_on_s3["env"], capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stderr  # 1: drift found (the replica's prompts are canned)
    assert f"{len(records)} captured requests of tiny/1" in result.stdout, result.stdout + result.stderr
    assert "report:" in result.stdout


def test_unknown_scheme_is_one_error_line_at_start_up(fleet_on_s3, tmp_path):
    import yaml

    config = yaml.safe_load((fleet_on_s3["folder"] / "gateway.yaml").read_text())
    config["capture"]["path"] = "nosuchscheme://bucket/traffic"
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "llmops", "serve", "--config", str(path), "--port", str(free_port())],
                            cwd=fleet_on_s3["folder"], env=fleet_on_s3["env"], capture_output=True, text=True,
                            timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and lines[-1].startswith("error:") and "nosuchscheme://bucket" in lines[-1], result.stderr


def test_wrong_credentials_are_a_start_up_error_naming_the_dataset(fleet_on_s3, monkeypatch):
    from llmops.errors import ConfigError
    from llmops.traffic import TrafficWriter

    for name, value in {**fleet_on_s3["s3"].env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        TrafficWriter(fleet_on_s3["dataset"])
    assert fleet_on_s3["dataset"] in str(caught.value) and "wrong-secret" not in str(caught.value)
    for name, value in fleet_on_s3["s3"].env.items():
        monkeypatch.setenv(name, value)
    writer = TrafficWriter(fleet_on_s3["dataset"] + "-other", flush_interval=60)  # the right ones reach it
    writer.submit({"time": time.time(), "request_id": "direct", "model_version": "tiny/1"})
    writer.close()
    assert writer.stats.written == 1
