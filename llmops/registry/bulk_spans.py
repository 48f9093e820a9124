"""Store many new traces in one transaction: the rows MLflow's `log_spans` makes, without its per-trace ORM work.

MLflow's `SqlAlchemyStore.log_spans` (3.17) handles any span batch: spans of traces already stored,
concurrent writers, rollups. For that it flushes each new trace on its own, then runs an UPDATE and one
`merge` (a SELECT and an INSERT) per tag of every trace: about 6 ms of a server's CPU per gateway
trace, which caps one `mlflow server` worker near 130 traces/s. A gateway's batches are simpler: every
trace is new and complete (its root span is in the batch). For such a batch `bulk_log_spans` computes
the same rows with MLflow's own helpers (span translation, token-usage aggregation, previews, tag
validation) and writes them with one executemany per table. Any other batch returns False and the
caller uses MLflow's path. `tests/unit/test_bulk_spans.py` stores one batch both ways and compares
every row.

Two users:
- `trace_store.SqlTraceWriter`, when the gateway reaches the database itself (SQLite, `postgresql://`);
- `BulkSpanStore`, the tracking store of the team's tracking server when it runs
  `mlflow server --backend-store-uri llmops+postgresql://…` (`llmops.mlflow_plugin`): MLflow's SQL store
  with this `log_spans`, so the OTLP batches that gateways send (`POST /v1/traces`) are stored in bulk.
  Everything else the server does is MLflow's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from mlflow.store.tracking.sqlalchemy_store import (
    MLFLOW_ARTIFACT_LOCATION,
    TOKEN_COLUMN_BY_KEY,
    GenAiSemconvKey,
    SpanAttributeKey,
    SpansLocation,
    SqlAlchemyStore,
    SqlSpan,
    SqlTraceInfo,
    SqlTraceTag,
    TraceJSONEncoder,
    TraceState,
    TraceTagKey,
    _get_truncated_preview,
    _span_aggregation_node,
    _try_parse_json_string,
    _validate_trace_tag,
    aggregate_usage_from_span_nodes,
    append_to_uri_path,
    bounded_model_dimension,
    token_count_or_none,
    translate_span_when_storing,
    validate_trace_name,
)
from sqlalchemy.exc import IntegrityError

__all__ = ["bulk_log_spans", "BulkSpanStore"]

_DIALECTS = ("sqlite", "postgresql")
# Attributes whose handling needs MLflow's general path (costs, sessions, users).
_GENERAL_PATH_ATTRIBUTES = (SpanAttributeKey.LLM_COST, SpanAttributeKey.SESSION_ID,
                            GenAiSemconvKey.CONVERSATION_ID, "user.id")


def bulk_log_spans(store: SqlAlchemyStore, experiment_id: str, spans: list, translate: bool = True) -> bool:
    """Store `spans` (MLflow `Span`s of new, complete traces) in one transaction.

    Returns False, having written nothing, when the batch needs MLflow's general `log_spans`: a trace
    without its root span in the batch, a trace already stored, cost/session/user attributes, OTel
    resource attributes, trace rollups, or a database other than SQLite and PostgreSQL.

    `translate=False` skips MLflow's translation of other tracing conventions (OpenInference, OTel GenAI)
    into its own attribute keys, half of the work here: for spans made with MLflow's keys already, such
    as the gateway's (`trace_store.mlflow_spans`), it changes nothing, which the tests check.
    """
    from mlflow.store.tracking.utils.sql_trace_rollups import rollups_enabled

    if not spans or store.db_type not in _DIALECTS or rollups_enabled():
        return False
    by_trace: dict[str, list] = defaultdict(list)
    for span in spans:
        if _resource_attributes(span):
            return False
        by_trace[span.trace_id].append(span)
    experiment = store.get_experiment(experiment_id)
    infos, tags, span_rows = [], [], []
    for trace_id, trace_spans in by_trace.items():
        rows = _trace_rows(trace_id, int(experiment_id), experiment.artifact_location, trace_spans, translate)
        if rows is None:
            return False
        infos.append(rows[0])
        tags.extend(rows[1])
        span_rows.extend(rows[2])
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            connection = session.connection()
            if connection.execute(SqlTraceInfo.__table__.select().with_only_columns(SqlTraceInfo.request_id)
                                  .where(SqlTraceInfo.request_id.in_(list(by_trace))).limit(1)).first():
                return False  # some trace exists: its spans must merge with the stored ones
            connection.execute(SqlTraceInfo.__table__.insert(), infos)
            connection.execute(SqlTraceTag.__table__.insert(), tags)
            connection.execute(SqlSpan.__table__.insert(), span_rows)
    except IntegrityError:  # another writer created one of these traces meanwhile; nothing was committed
        return False
    return True


def _resource_attributes(span: Any) -> bool:
    """Whether the span's OTel resource carries attributes MLflow would store as trace tags."""
    resource = getattr(span._span, "resource", None)
    return resource is not None and any(not key.startswith(("telemetry.sdk.", "mlflow."))
                                        for key in resource.attributes)


def _trace_rows(trace_id: str, experiment_id: int, artifact_location: str, spans: list, translate: bool):
    """(trace_info row, tag rows, span rows) for one trace, as MLflow's `log_spans` stores a new trace;
    None when the trace needs the general path."""
    root = None
    usage_nodes, span_rows = [], []
    for span in spans:
        span_dict = translate_span_when_storing(span) if translate else span.to_dict()
        attributes = span_dict.get("attributes", {})
        if any(key in attributes for key in _GENERAL_PATH_ATTRIBUTES):
            return None
        if span.parent_id is None:
            if root is not None:
                return None
            root = (span, attributes)
        usage_nodes.append(_span_aggregation_node(span.span_id, span.parent_id, attributes,
                                                  SpanAttributeKey.CHAT_USAGE))
        span_rows.append({
            "trace_id": trace_id,
            "experiment_id": experiment_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_id,
            "name": span.name,
            "type": span.span_type,
            "status": span.status.status_code,
            "start_time_unix_nano": span.start_time_ns,
            "end_time_unix_nano": span.end_time_ns,
            # Unescaped non-ASCII text, as MLflow stores it (so `span.content` LIKE filters match).
            "content": json.dumps(span_dict, cls=TraceJSONEncoder, ensure_ascii=False),
            "input_cost": None,
            "output_cost": None,
            "total_cost": None,
            "model_name": bounded_model_dimension(_try_parse_json_string(attributes.get(SpanAttributeKey.MODEL))),
            "model_provider": bounded_model_dimension(
                _try_parse_json_string(attributes.get(SpanAttributeKey.MODEL_PROVIDER))),
        })
    if root is None:
        return None
    root_span, root_attributes = root
    start_ms = min(span.start_time_ns for span in spans) // 1_000_000
    end_times = [span.end_time_ns for span in spans if span.end_time_ns is not None]
    end_ms = max(end_times) // 1_000_000 if end_times else None
    status = TraceState.ERROR.value if root_span.status.status_code == "ERROR" else TraceState.OK.value
    info = {
        "request_id": trace_id,
        "experiment_id": experiment_id,
        "timestamp_ms": start_ms,
        "execution_time_ms": None if end_ms is None else end_ms - start_ms,
        "status": status,
        "client_request_id": None,
        "request_preview": _preview(root_attributes.get(SpanAttributeKey.INPUTS), "user"),
        "response_preview": _preview(root_attributes.get(SpanAttributeKey.OUTPUTS), "assistant"),
        "trace_name": None,
        "session_id": None,
        "db_payload_generation": 1,  # created (0), then advanced once by the span write, as in `log_spans`
    }
    usage = aggregate_usage_from_span_nodes(usage_nodes) or {}
    for key, column in TOKEN_COLUMN_BY_KEY.items():
        info[column] = token_count_or_none(usage.get(key))
    artifacts = append_to_uri_path(artifact_location, SqlAlchemyStore.TRACE_FOLDER_NAME, trace_id,
                                   SqlAlchemyStore.ARTIFACTS_FOLDER_NAME)
    tags = {MLFLOW_ARTIFACT_LOCATION: artifacts, TraceTagKey.SPANS_LOCATION: SpansLocation.TRACKING_STORE.value}
    prefix = SpanAttributeKey.TRACE_TAG_PREFIX
    for key, value in root_attributes.items():
        if not key.startswith(prefix):
            continue
        try:
            tag_key, tag_value = _validate_trace_tag(key[len(prefix):], str(_try_parse_json_string(value)))
        except Exception:  # MLflow skips an invalid tag too
            continue
        if tag_key == TraceTagKey.TRACE_NAME:
            info["trace_name"] = validate_trace_name(tag_value)
        else:
            tags[tag_key] = tag_value
    return info, [{"request_id": trace_id, "key": k, "value": v} for k, v in tags.items()], span_rows


def _preview(value: Any, role: str):
    return _get_truncated_preview(value, role=role) if value else None


class BulkSpanStore(SqlAlchemyStore):
    """MLflow's SQL tracking store whose `log_spans` stores batches of new traces in bulk."""

    def log_spans(self, location: str, spans: list, tracking_uri=None) -> list:
        if bulk_log_spans(self, location, spans):
            return spans
        return super().log_spans(location, spans, tracking_uri=tracking_uri)
