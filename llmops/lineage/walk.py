"""Walk the lineage of a model version, or of the version that served one gateway request.

    served answer (trace) -> model version -> adapter -> base (digest, source, revision)
      -> dataset (path, digest, DVC pointer) -> training config (digest, stored YAML) -> prompt version
      -> fine-tune run (metrics, git commit) -> evaluation evidence of each alias move -> alias history

The result is plain JSON-ready data (`llmops lineage --json` prints it as is; the terminal tree is
drawn from the same data by `render.py`). Everything is read through `llmops.registry` and public
MLflow tracking APIs (`runs.py`), so it works on every store the registry supports.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from llmops.lineage import TAG_REPRODUCES, LineageError
from llmops.lineage.record import SPLITS, split_prefix
from llmops.lineage.state import base_state, dataset_state

__all__ = ["walk_lineage"]

_CONFIG_ARTIFACT = "config.yaml"
_DATASET_ARTIFACT = "dataset.json"


def walk_lineage(ref: Optional[str] = None, trace_id: Optional[str] = None, request_id: Optional[str] = None,
                 verify: bool = True) -> dict[str, Any]:
    """The lineage of `ref` (`name`, `name@alias`, `name/VERSION`), or of the version behind a trace.

    Args:
        ref / trace_id / request_id: exactly one: a model reference, an MLflow trace id, or the
            `x-request-id` of a gateway response.
        verify: also hash the dataset and base files as they are now, to show whether they changed.

    Raises:
        LineageError / NotFoundError: no such version or trace, or not exactly one of the three given.
    """
    from llmops.registry import resolve_model_ref

    if sum(x is not None for x in (ref, trace_id, request_id)) != 1:
        raise LineageError("give exactly one of REF, --trace-id ID and --request-id ID")
    lineage: dict[str, Any] = {"query": ref or trace_id or request_id, "trace": None, "warnings": []}
    if ref is None:
        from llmops.lineage.runs import find_trace

        trace = find_trace(trace_id=trace_id, request_id=request_id)
        lineage["trace"] = vars(trace)
        if not trace.model_version:
            raise LineageError(f"trace {trace.trace_id} records no model version (the request failed before "
                               "its model was resolved)")
        ref = trace.model_version
    version = resolve_model_ref(ref)
    lineage["model"] = _model_section(version)
    run_id = version.run_id
    if version.kind == "base":
        lineage["base"] = _base_section(version.ref, version.digest, verify)
    else:
        lineage["base"] = _base_section(version.base, version.tags.get("llmops.base_digest"), verify)
        fingerprint = _json_artifact(run_id, _DATASET_ARTIFACT, lineage["warnings"]) if run_id else None
        lineage["datasets"] = _datasets_section(version.tags, fingerprint or {}, verify)
        lineage["config"] = _config_section(version, run_id, lineage["warnings"])
        lineage["prompt"] = _prompt_section(version.tags.get("llmops.prompt_version"), lineage["warnings"])
        lineage["run"] = _run_section(version, lineage["warnings"])
    lineage["evaluations"] = _evaluations(version.tags)
    from llmops.lineage.evidence import alias_moves, with_eval_runs

    history = alias_moves(version.name)
    lineage["evidence"] = [with_eval_runs(event) for event in history if event["to_version"] == version.version]
    lineage["alias_history"] = history
    return lineage


# ------------------------------------------------------------------------------------------ sections


def _model_section(version: Any) -> dict[str, Any]:
    return {
        "ref": version.ref, "name": version.name, "version": version.version, "kind": version.kind,
        "aliases": list(version.aliases), "digest": version.digest, "source": version.source,
        "created": version.created.isoformat() if version.created else None,
        "description": version.description or None,
        "llmops_version": version.tags.get("llmops.llmops_version"),
        "reproduces": version.tags.get(TAG_REPRODUCES),
    }


def _base_section(base_ref: Optional[str], recorded: Optional[str], verify: bool) -> Optional[dict[str, Any]]:
    from llmops.errors import NotFoundError
    from llmops.registry import resolve_model_ref

    if not base_ref:
        return None
    section: dict[str, Any] = {"ref": base_ref, "digest": recorded or None}
    try:
        base = resolve_model_ref(base_ref)
    except NotFoundError as error:
        section["state"] = f"missing from the registry: {error}"
        return section
    section.update(source=base.source, revision=base.revision, registered_digest=base.digest)
    if recorded and base.digest and recorded != base.digest:
        section["state"] = f"the registry now records {base.digest} for {base_ref}"
    elif verify:
        section.update(base_state(base, recorded))
    return section


def _datasets_section(tags: dict[str, str], fingerprint: dict[str, Any], verify: bool) -> dict[str, Any]:
    from llmops.lineage.dvc import DvcDataset

    datasets: dict[str, Any] = {}
    for split in SPLITS:
        prefix = split_prefix(split)
        printed = fingerprint.get(split) or {}
        path = tags.get(f"{prefix}.path") or printed.get("file")
        if not path:
            continue
        digest = tags.get(f"{prefix}.digest") or printed.get("file_digest")
        entry: dict[str, Any] = {"path": path, "digest": digest}
        for key in ("rows", "examples", "tokens", "trained_tokens", "tokenized_digest"):
            if key in printed:
                entry[key] = printed[key]
        tracked = DvcDataset.from_tags(tags, prefix)
        entry["dvc"] = vars(tracked) if tracked else None
        if verify:
            entry.update(dataset_state(path, digest))
        datasets[split] = entry
    if "train" in datasets:
        datasets["train"]["fingerprint_digest"] = tags.get("llmops.dataset_digest")
    return datasets


def _config_section(version: Any, run_id: Optional[str], warnings: list[str]) -> dict[str, Any]:
    import yaml

    section: dict[str, Any] = {"digest": version.tags.get("llmops.config_digest"),
                               "file": version.tags.get("llmops.finetune_config"), "artifact": None, "yaml": None}
    text = None
    if run_id:
        from llmops.lineage.runs import read_run_artifact

        text = read_run_artifact(run_id, _CONFIG_ARTIFACT)
    if text is None:
        warnings.append(f"the stored config ({_CONFIG_ARTIFACT} of run {run_id}) is not in the store")
        return section
    section.update(artifact=f"runs:/{run_id}/{_CONFIG_ARTIFACT}", yaml=text)
    try:
        data = yaml.safe_load(text) or {}
        training, adapter, data_section = data.get("training", {}), data.get("adapter", {}), data.get("data", {})
        section["summary"] = {
            "base": data.get("model", {}).get("base"), "seed": training.get("seed"), "epochs": training.get("epochs"),
            "max_steps": training.get("max_steps"), "lr": training.get("lr"), "batch_size": training.get("batch_size"),
            "lora_r": adapter.get("r"), "lora_alpha": adapter.get("alpha"), "prompt": data_section.get("prompt"),
            "loss_on": data_section.get("loss_on"), "max_seq_len": data_section.get("max_seq_len"),
        }
    except yaml.YAMLError as error:
        warnings.append(f"the stored config of run {run_id} is not valid YAML: {error}")
    return section


def _prompt_section(prompt_version: Optional[str], warnings: list[str]) -> Optional[dict[str, Any]]:
    from llmops.errors import RegistryError
    from llmops.registry import get_prompt

    if not prompt_version or prompt_version == "none":
        return None
    if prompt_version.startswith("inline:"):
        return {"ref": prompt_version, "template": "(inline in the config: data.template)"}
    try:
        prompt = get_prompt(prompt_version)
    except RegistryError as error:
        warnings.append(f"prompt {prompt_version}: {error}")
        return {"ref": prompt_version, "state": "missing"}
    return {"ref": prompt.ref, "template": prompt.template, "aliases": list(prompt.aliases),
            "commit_message": prompt.commit_message or None}


def _run_section(version: Any, warnings: list[str]) -> Optional[dict[str, Any]]:
    from llmops.lineage.runs import get_run_record

    tags = version.tags
    section: dict[str, Any] = {
        "run_id": version.run_id, "git_commit": tags.get("llmops.git_commit"),
        "train_steps": tags.get("llmops.train_steps"), "final_loss": tags.get("llmops.final_loss"),
        "eval_loss": tags.get("llmops.eval_loss"),
    }
    record = get_run_record(version.run_id) if version.run_id else None
    if record is None:
        warnings.append(f"the fine-tune run {version.run_id} is not in the store")
        return section
    section.update(experiment=record.experiment, name=record.name, status=record.status, start=record.start,
                   end=record.end, metrics=record.metrics,
                   world_size=record.params.get("run.world_size"), global_batch=record.params.get("run.global_batch"))
    return section


def _evaluations(tags: dict[str, str]) -> dict[str, dict[str, str]]:
    """`llmops.eval.<suite>.<scorer>` tags grouped by suite (the latest eval of each suite)."""
    grouped: dict[str, dict[str, str]] = {}
    for key, value in sorted(tags.items()):
        if key.startswith("llmops.eval.") and key.count(".") >= 3:
            suite, _, scorer = key.removeprefix("llmops.eval.").rpartition(".")
            grouped.setdefault(suite, {})[scorer] = value
    return grouped


def _json_artifact(run_id: str, path: str, warnings: list[str]) -> Optional[dict[str, Any]]:
    from llmops.lineage.runs import read_run_artifact

    text = read_run_artifact(run_id, path)
    if text is None:
        warnings.append(f"{path} of run {run_id} is not in the store")
        return None
    try:
        return json.loads(text)
    except ValueError:
        warnings.append(f"{path} of run {run_id} is not valid JSON")
        return None
