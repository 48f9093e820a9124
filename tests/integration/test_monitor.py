"""`llmops monitor --once`: a drift trigger fed drifted traffic retrains and gates; undrifted traffic fires nothing."""

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmops import registry
from llmops.cli import app
from llmops.finetune.job import run_finetune
from llmops.gateway.capture import CaptureWriter
from llmops.monitor.cron import last_fire_time, parse_cron

ROOT = Path(__file__).resolve().parents[2]
CAPITALS = ROOT / "llmops" / "data" / "capitals.jsonl"


def capture_chat(root: Path, tokenizer_dir: Path, version: str, questions: list[str]) -> None:
    """Write capture records the way the gateway does: chat-template token ids of each request."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    writer = CaptureWriter(root, flush_interval=60)
    for index, question in enumerate(questions):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        writer.submit({"time": time.time(), "request_id": f"r{index}", "endpoint": "chat.completions",
                       "model": "quickstart@production", "model_version": version, "status": 200,
                       "prompt_token_ids": list(ids), "prompt_tokens": len(ids)})
    writer.close()


@pytest.fixture
def served(store, tiny_model_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    registry.register_base_model("tiny", tiny_model_path)
    registry.register_prompt("capitals-qa", "What is the capital of {{ country }}?", alias="production")
    version = run_finetune(ROOT / "configs" / "finetune" / "quickstart.yaml",
                           ["checkpoint.dir=" + str(store.parent / "ckpt")]).version
    registry.set_model_alias("quickstart", "production", 1, reason="test set-up")
    config = {
        "model": "quickstart", "finetune": str(ROOT / "configs" / "finetune" / "quickstart.yaml"),
        "suite": str(ROOT / "evals" / "quickstart.yaml"),
        "triggers": {"drift": {"reference": str(CAPITALS), "capture_dir": str(store.parent / "traffic"),
                               "prompt": "capitals-qa@production", "min_requests": 20}},
    }
    path = store.parent / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return version, path, store.parent / "traffic"


@pytest.mark.slow
def test_drift_trigger_fires_only_on_drifted_traffic(served, tiny_model_path):
    version, config, traffic = served
    countries = [line.split('"country": "')[1].split('"')[0] for line in CAPITALS.read_text().splitlines()[:40]]
    capture_chat(traffic, tiny_model_path, version, [f"What is the capital of {c}?" for c in countries])
    quiet = CliRunner().invoke(app, ["monitor", "--config", str(config), "--once"])
    assert quiet.exit_code == 0, quiet.stdout + quiet.stderr
    assert "drift     quiet" in quiet.stdout and "registered" not in quiet.stdout
    assert registry.resolve_model_ref("quickstart").version == 1  # nothing was trained

    chatter = ["Tell me a joke about databases please", "How do I bake sourdough bread at home?",
               "Write a haiku about the sea and the wind", "Explain recursion to a five year old child"] * 10
    capture_chat(traffic, tiny_model_path, version, chatter)
    fired = CliRunner().invoke(app, ["monitor", "--config", str(config), "--once"])
    assert fired.exit_code == 0, fired.stdout + fired.stderr
    assert "drift     fires" in fired.stdout and "registered quickstart/2" in fired.stdout
    assert registry.resolve_model_ref("quickstart/2").kind == "adapter"

    import mlflow

    runs = mlflow.search_runs(experiment_names=["llmops-monitor"], output_format="list", order_by=["start_time ASC"])
    assert [r.data.tags["llmops.monitor.decision"] for r in runs] == ["none", "fired"]
    assert "token JS" in runs[1].data.tags["llmops.monitor.reason.drift"]
    assert runs[1].data.tags["llmops.monitor.version"] == "quickstart/2"


def test_dry_run_reports_without_acting(served):
    _, config, _ = served
    result = CliRunner().invoke(app, ["monitor", "--config", str(config), "--once", "--dry-run"])
    assert result.exit_code == 0 and "not judged: no captured chat traffic" in result.stdout


@pytest.mark.parametrize(
    "expression, now, expected",
    [("0 3 * * 0", "2026-11-27T10:00", "2026-11-22T03:00"),   # the last Sunday 03:00
     ("*/15 * * * *", "2026-11-27T10:07", "2026-11-27T10:00"),
     ("30 2 1 * *", "2026-11-27T10:00", "2026-11-01T02:30")],
)
def test_cron_last_fire_time(expression, now, expected):
    from datetime import datetime

    assert last_fire_time(expression, datetime.fromisoformat(now)) == datetime.fromisoformat(expected)


@pytest.mark.parametrize("expression", ["* * *", "61 * * * *", "a * * * *", "*/0 * * * *"])
def test_bad_cron(expression):
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError, match="cron"):
        parse_cron(expression)
