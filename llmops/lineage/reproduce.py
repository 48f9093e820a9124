"""Rebuild a fine-tuned version from its recorded lineage, after checking every input by digest.

    report = reproduce_version("quickstart/1")   # registers quickstart/N tagged llmops.reproduces=quickstart/1

What is reused: the stored resolved config (run artifact `config.yaml`), with the base pinned to the
recorded base version (`tiny` -> `tiny/1`) and the prompt to the recorded prompt version
(`capitals-qa@production` -> `capitals-qa/1`); the seed is the config's. What is checked first, and
refused with both digests when it differs: the base files, each dataset file (a DVC-tracked one is
fetched back through DVC when the workspace no longer holds it), the prompt version. Nothing is
trained or registered when a check fails. The new version gets no alias: a reproduction is evidence,
not a candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from llmops.lineage import TAG_REPRODUCES, LineageError
from llmops.lineage.compare import InputCheck, ReproduceReport, compare_runs
from llmops.lineage.record import SPLITS, split_prefix

__all__ = ["reproduce_version", "check_inputs", "default_out_dir"]


def default_out_dir(name: str, version: int) -> Path:
    """`runs/reproduce-NAME-VERSION` in the working directory (`-2`, `-3`, ... when taken)."""
    base = Path.cwd() / "runs" / f"reproduce-{name}-{version}"
    candidate, counter = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        counter += 1
        candidate = base.with_name(f"{base.name}-{counter}")
    return candidate


def _load_recorded(version: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored resolved config and the dataset fingerprint of the version's fine-tune run."""
    import json

    import yaml

    from llmops.lineage.runs import read_run_artifact

    if version.kind == "base":
        raise LineageError(f"{version.ref} is a base model: there is nothing to rebuild (reproduce a fine-tuned version)")
    if not version.run_id:
        raise LineageError(f"{version.ref} records no fine-tune run, so its config is unknown")
    text = read_run_artifact(version.run_id, "config.yaml")
    if text is None:
        raise LineageError(f"{version.ref}: the stored config (config.yaml of run {version.run_id}) is not in the store")
    fingerprint = read_run_artifact(version.run_id, "dataset.json")
    return yaml.safe_load(text) or {}, json.loads(fingerprint) if fingerprint else {}


def _check_base(version: Any) -> InputCheck:
    from llmops.errors import NotFoundError
    from llmops.lineage.state import base_state
    from llmops.registry import resolve_model_ref

    base_ref, recorded = version.base, version.tags.get("llmops.base_digest")
    if not base_ref:
        raise LineageError(f"{version.ref} records no base model (tag llmops.base)")
    try:
        base = resolve_model_ref(base_ref)
    except NotFoundError as error:
        raise LineageError(f"cannot reproduce {version.ref}: its base {base_ref} is gone: {error}") from None
    state = base_state(base, recorded)
    if state["state"] in ("changed", "missing") or (recorded and base.digest and base.digest != recorded):
        now = "nothing (the folder is gone)" if state["state"] == "missing" else state.get("now") or base.digest
        files = f" ({state['files']} files)" if state.get("files") else ""
        raise LineageError(
            f"base changed: {version.ref} was trained on {base_ref} with digest {recorded}, but "
            f"{base.source} now holds {now}{files}; restore those weights or register the new ones as a new base"
        )
    return InputCheck("base", base_ref, recorded, state.get("now") or recorded, state["state"], base.source)


def _check_dataset(version: Any, split: str, printed: dict[str, Any], data_dir: Path) -> Optional[InputCheck]:
    from llmops.lineage.dvc import DvcDataset, WorkspaceEdited, materialise
    from llmops.lineage.state import dataset_state
    from llmops.registry.digest import file_digest

    prefix = split_prefix(split)
    path = version.tags.get(f"{prefix}.path") or printed.get("file")
    recorded = version.tags.get(f"{prefix}.digest") or printed.get("file_digest")
    if not path:
        return None
    if not recorded:
        raise LineageError(f"{version.ref} records no digest for its {split} data ({path}), so it cannot be checked")
    rows = printed.get("rows")

    def changed(extra: str = "") -> LineageError:
        state = dataset_state(path, recorded)
        if state["state"] == "missing":
            holds = "is missing"
        else:
            holds = f"now holds {state['now']} ({state['rows_now']} rows, {state['bytes_now']} bytes)"
        was = f" ({rows} rows)" if rows is not None else ""
        return LineageError(f"dataset changed: {version.ref} was trained on data.{split} {path} with digest "
                            f"{recorded}{was}, but the file {holds}{extra}")

    tracked = DvcDataset.from_tags(version.tags, prefix)
    if tracked is None:
        state = dataset_state(path, recorded)
        if state["state"] != "unchanged":
            raise changed()
        return InputCheck(f"data.{split}", path, recorded, state["now"], "unchanged", "the file on disk")
    try:
        local, how = materialise(tracked, data_dir / split)
    except WorkspaceEdited:
        raise changed(f"; it is DVC-tracked: `dvc checkout {tracked.pointer}` in {tracked.repo} restores "
                      f"md5 {tracked.file_md5}") from None
    now = file_digest(local)
    if now != recorded:
        raise LineageError(f"DVC delivered {local} with digest {now}, but {version.ref} was trained on {recorded}")
    return InputCheck(f"data.{split}", str(local), recorded, now, "unchanged", f"DVC md5 {tracked.md5} via {how}")


def _check_prompt(version: Any) -> Optional[InputCheck]:
    from llmops.errors import RegistryError
    from llmops.registry import get_prompt

    recorded = version.tags.get("llmops.prompt_version")
    if not recorded or recorded == "none" or recorded.startswith("inline:"):
        return None  # an inline template is part of the stored config
    try:
        prompt = get_prompt(recorded)
    except RegistryError as error:
        raise LineageError(f"cannot reproduce {version.ref}: its prompt version {recorded} is gone: {error}") from None
    return InputCheck("prompt", prompt.ref, recorded, prompt.ref, "unchanged", "prompt registry (immutable version)")


def check_inputs(version: Any, config: dict[str, Any], fingerprint: dict[str, Any], data_dir: Path) -> list[InputCheck]:
    """Check base, datasets and prompt of `version` against their records; pin them in `config`.

    Raises:
        LineageError: an input is missing or differs (the message names both digests and what is there now).
    """
    checks = [_check_base(version)]
    config.setdefault("model", {})["base"] = version.base
    for split in SPLITS:
        if not (config.get("data") or {}).get(split):
            continue
        check = _check_dataset(version, split, fingerprint.get(split) or {}, data_dir)
        if check is not None:
            config["data"][split] = check.ref
            checks.append(check)
    prompt = _check_prompt(version)
    if prompt is not None:
        config["data"]["prompt"] = prompt.ref
        checks.append(prompt)
    return checks


def reproduce_version(ref: str, out: Optional[Path] = None, suite: Optional[Path] = None,
                      say: Callable[[str], Any] = lambda _: None) -> ReproduceReport:
    """Rebuild `ref` from its lineage, register it tagged `llmops.reproduces`, and compare the two.

    Args:
        ref: the fine-tuned version (`NAME/VERSION` or `NAME@ALIAS`).
        out: run folder of the rebuild (must be empty); default `runs/reproduce-NAME-VERSION`.
        suite: eval suite for the score comparison; default the suite of the version's last gated promotion.
        say: receives one line per stage, for progress.

    Raises:
        LineageError: missing records, or a changed base, dataset or prompt (nothing is trained or registered).
    """
    import yaml

    from llmops.lineage.runs import get_run_record
    from llmops.registry import resolve_model_ref

    version = resolve_model_ref(ref)
    config, fingerprint = _load_recorded(version)
    run = get_run_record(version.run_id)
    world = (run.params.get("run.world_size") if run else None) or "1"
    if world != "1":
        raise LineageError(f"{version.ref} was trained by {world} processes; reproduce rebuilds in one process, "
                           "which would change the global batch")
    out = Path(out).resolve() if out else default_out_dir(version.name, version.version)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LineageError(f"--out {out} is not an empty folder; give a new one")
    say(f"checking the lineage of {version.ref}")
    checks = check_inputs(version, config, fingerprint, out / "data")
    config["checkpoint"] = {**(config.get("checkpoint") or {}), "dir": str(out), "resume": "never"}
    config["register"] = {"enabled": True, "name": version.name, "alias": None,
                          "description": f"reproduction of {version.ref}"}
    config["tracking"] = {**(config.get("tracking") or {}), "run_name": f"reproduce-{version.name}-{version.version}"}
    config["distributed"] = {**(config.get("distributed") or {}), "accelerate_config": None, "num_processes": None}
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "reproduce.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    seed = (config.get("training") or {}).get("seed")
    say(f"inputs match their records; training with seed {seed} from {config_path}")
    from llmops.finetune.job import run_finetune

    # A dataset read back at its recorded Git revision trains from a copy in the run folder; its DVC
    # record is still the original's, so the reproduction carries that one.
    dvc_record = {k: v for k, v in version.tags.items() if k.startswith("llmops.data.") and ".dvc." in k}
    result = run_finetune(config_path, extra_tags={**dvc_record, TAG_REPRODUCES: version.ref})
    reproduction = resolve_model_ref(result.version)
    say(f"registered {reproduction.ref}; comparing with {version.ref}")
    return compare_runs(version, reproduction, result, checks, seed, out, suite)
