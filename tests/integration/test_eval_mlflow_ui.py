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
    assert {t.info.client_request_id for t in traces} == sent
    assert all(r.startswith("llmops-eval-") for r in sent)
    # a second run on the same suite reuses the dataset (records upserted, not duplicated)
    again = log_eval_run(result)
    dataset_id = mlflow.get_run(again).data.tags["llmops.mlflow_dataset_id"]
    assert dataset_id == mlflow.get_run(run_id).data.tags["llmops.mlflow_dataset_id"]
    assert len(mlflow.genai.datasets.get_dataset(dataset_id=dataset_id).to_df()) == 3
