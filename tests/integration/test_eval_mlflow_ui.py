"""Eval runs in MLflow 3's evaluation views, read back through MLflow's public API: the suite as an
evaluation dataset, per-item scores as assessments, on the gateway's own traces when it traced them."""

import mlflow
import pytest

from llmops import registry
from llmops.evaluation.mlflow_eval import dataset_name
from llmops.evaluation.runner import load_suite, run_suite
from llmops.evaluation.tracking import EVAL_EXPERIMENT, log_eval_run

SUITE = """\
name: mini-ui
version: 3
items:
  - {country: France, capital: Paris}
  - {country: Japan, capital: Tokyo}
  - {country: Kenya, capital: Nairobi}
id_field: country
prompt: {messages: [{role: user, content: "What is the capital of {{ country }}?"}]}
model: tiny/1
params: {max_tokens: 4, temperature: 0}
scorers:
  - {name: correct, type: exact_match, expected: "{{ capital }}"}
  - {name: says_capital, type: regex, value: "^[A-Z]"}
  - {type: latency}
"""


@pytest.fixture
def suite(store, tiny_model_path, tmp_path):
    registry.register_base_model("tiny", tiny_model_path)
    path = tmp_path / "evals" / "mini.yaml"
    path.parent.mkdir()
    path.write_text(SUITE)
    return load_suite(path)


def _all_experiments():
    return [e.experiment_id for e in mlflow.MlflowClient().search_experiments()]


def _check_run(result, run_id):
    run = mlflow.get_run(run_id)
    assert run.data.tags["mlflow.runType"] == "genai_evaluate"
    evaluation_runs = mlflow.search_runs(experiment_names=[EVAL_EXPERIMENT], output_format="list",
                                         filter_string="tags.`mlflow.runType` = 'genai_evaluate'")
    assert run_id in {r.info.run_id for r in evaluation_runs}
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == [dataset_name(result)]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "evaluation"

    dataset = mlflow.genai.datasets.get_dataset(dataset_id=run.data.tags["llmops.mlflow_dataset_id"])
    records = dataset.to_df()
    assert sorted(r["country"] for r in records["inputs"]) == ["France", "Japan", "Kenya"]
    assert {e["correct"] for e in records["expectations"]} == {"Paris", "Tokyo", "Nairobi"}

    traces = mlflow.search_traces(locations=_all_experiments(), run_id=run_id, return_type="list")
    assert len(traces) == 3
    scores = {i.item_id: i.scores for i in result.items}
    seen = set()
    for trace in traces:
        feedback = {a.name: a for a in trace.info.assessments}
        assert set(feedback) == {"correct", "says_capital"}  # latency lives on the trace itself
        assert all(a.source.source_type == "CODE" and a.metadata["mlflow.assessment.sourceRunId"] == run_id
                   for a in feedback.values())
        item = feedback["correct"].metadata["llmops.item_id"]
        assert feedback["correct"].value == scores[item]["correct"]
        assert feedback["says_capital"].value == scores[item]["says_capital"]
        seen.add(item)
    assert seen == {"France", "Japan", "Kenya"}
    return traces


def test_in_process_run_gets_its_own_item_traces(suite):
    result = run_suite(suite, progress=False)
    run_id = log_eval_run(result)
    traces = _check_run(result, run_id)
    assert all(t.info.tags["llmops.eval_run"] == run_id and t.info.client_request_id is None for t in traces)


def test_gateway_run_scores_land_on_the_gateways_own_traces(suite):
    import torch

    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.server import BackgroundServer

    torch.set_num_threads(1)
    app = create_app(GatewayConfig(tracing={"flush_interval": 0.2, "experiment": "gw-traces"}))
    server = BackgroundServer(app).start()
    try:
        result = run_suite(suite, gateway=server.url, use_cache=False, progress=False)
        run_id = log_eval_run(result)
    finally:
        server.stop()
    traces = _check_run(result, run_id)
    gateway_experiment = mlflow.get_experiment_by_name("gw-traces").experiment_id
    sent = {i.request_ids[0] for i in result.items}
    assert all(t.info.experiment_id == gateway_experiment for t in traces)
    assert {t.info.tags["llmops.client_request_id"] for t in traces} == sent
    assert all(r.startswith("llmops-eval-") for r in sent)
    # a second run on the same suite reuses the dataset (records upserted, not duplicated)
    again = log_eval_run(result)
    dataset_id = mlflow.get_run(again).data.tags["llmops.mlflow_dataset_id"]
    assert dataset_id == mlflow.get_run(run_id).data.tags["llmops.mlflow_dataset_id"]
    assert len(mlflow.genai.datasets.get_dataset(dataset_id=dataset_id).to_df()) == 3


@pytest.mark.slow
def test_scores_show_in_mlflows_own_ui(store, tmp_path):
    """MLflow's UI (a real `mlflow server` in headless Chromium) lists the run's item traces with the scores."""
    import shutil
    from pathlib import Path

    from llmops.evaluation.results import EvalResult, ItemResult, summarise

    if not Path("/usr/bin/chromedriver").exists() or shutil.which("chromium") is None:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from services import mlflow_server  # tests/ is on sys.path (pytest puts conftest.py's folder there)

    items = [ItemResult(f"Country{i}", f"h{i}", "p", {"country": f"Country{i}", "capital": f"City{i}"},
                        [f"City{i}" if i % 4 else "unsure"], {"correct": float(i % 4 != 0)}, expected={"correct": f"City{i}"})
             for i in range(20)]
    summaries = {"correct": summarise("correct", [i.scores["correct"] for i in items], True)}
    result = EvalResult("ui-suite", "1", "nobody@x", None, None, items, summaries, {}, 20, 0, 1.0)
    run_id = log_eval_run(result)
    experiment_id = mlflow.get_run(run_id).info.experiment_id

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    with mlflow_server(f"sqlite:///{store}", tmp_path / "server") as server:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(f"{server.url}/#/experiments/{experiment_id}/runs/{run_id}/traces")
            body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
            WebDriverWait(driver, 120).until(lambda d: "Country7" in body(d) and "AVG" in body(d))
            text = body(driver)
            assert "ui-suite:nobody@x" in text  # the evaluation run
            assert "correct" in text and "0.75" in text  # the assessment column and its average
            assert "20 of 20" in text  # every item's trace
        finally:
            driver.quit()
