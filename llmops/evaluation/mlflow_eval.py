"""An llmops eval run in MLflow 3's own evaluation views: dataset, one trace per item, scores as assessments.

What `mlflow.genai.evaluate` leaves behind, made from a run llmops already scored (MLflow 3.17):
- the suite as a managed evaluation dataset (`mlflow.genai.datasets.create_dataset` +
  `EvaluationDataset.merge_records`, which upserts by inputs), logged as the run's input with
  context "evaluation";
- the run tagged `mlflow.runType = genai_evaluate`, so the UI lists it among evaluation runs;
- one trace per item linked to the run (`MlflowClient.link_traces_to_run`): the gateway's own trace
  when the answer came through a gateway with tracing (found by the `x-request-id` the runner sent,
  which the gateway tags its trace with, `llmops.client_request_id`), else a trace written here;
- each quality score as a `Feedback` assessment on that trace (`mlflow.log_feedback`), with the
  run id in `mlflow.assessment.sourceRunId` as MLflow's harness sets it. Latency and token counts are
  not repeated as assessments: the trace already carries its duration and token usage.

Checked against the installed MLflow 3.17.2 source (`mlflow/genai/evaluation/base.py` `_log_dataset_input`,
`harness.py` `_log_assessments`) and its docs: https://mlflow.org/docs/latest/genai/tracing/collect-user-feedback
and the "evaluation runs" concept (one trace per dataset row, feedback attached to each trace).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

from llmops.evaluation.results import EvalResult, ItemResult

__all__ = ["EvalLogged", "log_eval_to_mlflow_ui", "dataset_name"]

_log = logging.getLogger(__name__)
_LINK_BATCH = 100  # link_traces_to_run takes at most 100 trace ids per call
_SOURCE_RUN_KEY = "mlflow.assessment.sourceRunId"  # mlflow.entities.assessment.AssessmentMetadataKey.SOURCE_RUN_ID


@dataclass
class EvalLogged:
    """What was written: the dataset, and each item's trace id (and whether the gateway made it)."""

    dataset_id: str
    trace_ids: dict[str, str]
    from_gateway: int
    assessments: int


def dataset_name(result: EvalResult) -> str:
    """The MLflow evaluation dataset of a suite version."""
    return f"llmops.{result.suite}.v{result.suite_version}"


def _ensure_dataset(result: EvalResult, experiment_id: str) -> Any:
    from mlflow.genai.datasets import add_dataset_to_experiments, create_dataset, search_datasets

    name = dataset_name(result)
    existing = search_datasets(filter_string=f"name = '{name}'", max_results=1)
    if existing:
        dataset = existing[0]
        if experiment_id not in (dataset.experiment_ids or []):
            dataset = add_dataset_to_experiments(dataset.dataset_id, [experiment_id])
    else:
        dataset = create_dataset(name=name, experiment_id=[experiment_id],
                                 tags={"llmops.suite": result.suite, "llmops.suite_version": result.suite_version})
    records = [{"inputs": dict(item.row), "expectations": dict(item.expected) or {"item_id": item.item_id},
                "tags": {"llmops.item_id": item.item_id}} for item in result.items]
    dataset.merge_records(records)
    return dataset


def _gateway_traces(request_ids: list[str], wait_s: float) -> dict[str, str]:
    """request id -> trace id for the gateway traces of these requests, in any experiment.

    The gateway tags each trace with the client's `x-request-id` (`llmops.client_request_id`, a tag:
    searchable on every store, a tracking server included). Tags take no `IN`, so the run's ids, which
    share one prefix (`llmops-eval-<run token>-`), are found with one `LIKE` query per poll.
    """
    import os

    import mlflow

    from llmops.registry.store import configure

    experiments = [e.experiment_id for e in configure().search_experiments(max_results=1000)]
    wanted = set(request_ids)
    # `_` in the prefix matches any character: a superset, filtered against `wanted` below
    prefix = os.path.commonprefix(request_ids).replace("'", "").replace("%", "")
    found: dict[str, str] = {}
    started = time.monotonic()
    while True:
        traces = mlflow.search_traces(locations=experiments, return_type="list", include_spans=False,
                                      filter_string=f"tags.`llmops.client_request_id` LIKE '{prefix}%'",
                                      max_results=max(1000, 2 * len(request_ids)))
        for trace in traces:
            request_id = (trace.info.tags or {}).get("llmops.client_request_id")
            if request_id in wanted:
                found[request_id] = trace.info.trace_id
        # a gateway's exporter writes every flush interval: wait for traces still queued, but give up
        # after 2 s when none has appeared (that gateway traces elsewhere, or not at all)
        waited = time.monotonic() - started
        if len(found) == len(wanted) or waited >= wait_s or (not found and waited >= min(2.0, wait_s)):
            return found
        time.sleep(0.5)


def _write_item_traces(result: EvalResult, items: list[ItemResult], run_id: str) -> dict[str, str]:
    """One trace per item (inputs: the row; outputs: the answers) through the gateway's bulk trace writer."""
    from llmops.evaluation.tracking import EVAL_EXPERIMENT
    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import RequestTrace

    traces, ids = [], {}
    now = time.time_ns()
    for item in items:
        trace = RequestTrace(name=f"eval {result.suite}", start_ns=now, end_ns=now + 1)
        trace.inputs, trace.outputs = dict(item.row), item.answers[0] if len(item.answers) == 1 else item.answers
        for key, value in (("llmops.suite", result.suite), ("llmops.item_id", item.item_id), ("llmops.eval_run", run_id),
                           ("llmops.model_version", result.model_version or result.model_ref)):
            trace.set_tag(key, value)
        traces.append(trace)
        ids[item.item_id] = trace.trace_id
    if traces:
        writer_for(EVAL_EXPERIMENT).write(traces)
    return ids


def log_eval_to_mlflow_ui(result: EvalResult, run_id: str, experiment_id: str) -> EvalLogged:
    """Make the eval run `run_id` show in MLflow's evaluation views (see the module doc)."""
    import mlflow
    from mlflow.entities import AssessmentSource, DatasetInput, InputTag

    from llmops.registry.store import configure, retry_locked

    client = configure()
    dataset = _ensure_dataset(result, experiment_id)
    # `Dataset._to_mlflow_entity` is how mlflow.genai.evaluate logs a managed dataset as a run input too
    context = InputTag(key="mlflow.data.context", value="evaluation")
    retry_locked(client.log_inputs)(run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[context])])
    client.set_tag(run_id, "mlflow.runType", "genai_evaluate")

    first_request = {item.item_id: item.request_ids[0] for item in result.items if item.request_ids and item.request_ids[0]}
    by_request = _gateway_traces(list(first_request.values()), 10.0 if result.gateway else 0.0) if first_request else {}
    trace_ids = {i: by_request[r] for i, r in first_request.items() if r in by_request}
    missing = [item for item in result.items if item.item_id not in trace_ids]
    trace_ids.update(_write_item_traces(result, missing, run_id))
    ordered = list(trace_ids.values())
    for start in range(0, len(ordered), _LINK_BATCH):
        retry_locked(client.link_traces_to_run)(ordered[start:start + _LINK_BATCH], run_id)

    quality = [k for k, s in result.summaries.items() if s.quality]
    source = AssessmentSource(source_type="CODE", source_id="llmops")
    logged = 0
    for item in result.items:
        for key in quality:
            value: Optional[float] = item.scores.get(key)
            metadata = {_SOURCE_RUN_KEY: run_id, "llmops.item_id": item.item_id}
            if value is None:  # unmeasured (an unparseable judge reply): an assessment error, not a score
                retry_locked(mlflow.log_feedback)(trace_id=trace_ids[item.item_id], name=key, source=source,
                                                  error=Exception("unmeasured"), metadata=metadata)
            else:
                retry_locked(mlflow.log_feedback)(trace_id=trace_ids[item.item_id], name=key, value=value,
                                                  source=source, metadata=metadata)
            logged += 1
    return EvalLogged(dataset.dataset_id, trace_ids, len(result.items) - len(missing), logged)
