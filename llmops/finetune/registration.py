"""What a fine-tune leaves behind: the run's params and lineage files, the adapter folder, the registry version.

Rank 0 only, except `save_adapter`, which is collective (the state dict is gathered from every
process under FSDP/DeepSpeed). `lineage_tags` builds the tags every registered adapter carries;
`register_finetune` takes extra tags, so other lineage sources (DVC, `reproduces`) add theirs
without changing this module's callers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

from llmops.finetune.schema import FinetuneConfig

__all__ = ["git_commit", "log_start", "save_adapter", "lineage_tags", "register_finetune"]


def git_commit(folder: Path) -> str:
    """HEAD of the git checkout holding `folder` (`+dirty` with tracked changes), or `unknown`."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_start(config: FinetuneConfig, run_dir: Path, tracker: Any, data: Any, base: Any, *, resumed: bool,
              total_steps: int, world: int, global_batch: int) -> None:
    """Write the resolved config and dataset fingerprint into `run_dir`; log params and both files (new runs)."""
    import yaml

    from llmops.finetune.tracking import flatten

    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config.resolved()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    (run_dir / "dataset.json").write_text(json.dumps(data.fingerprint, indent=2))
    if resumed:  # the run already holds them; MLflow params cannot be rewritten
        return
    params = flatten(resolved)
    params.update({
        "run.world_size": str(world),
        "run.global_batch": str(global_batch),
        "run.total_steps": str(total_steps),
        "run.base_resolved": base.registry_ref or base.load_from,
    })
    tracker.log_params(params)
    tracker.log_artifact(run_dir / "config.yaml")
    tracker.log_artifact(run_dir / "dataset.json")


def save_adapter(config: FinetuneConfig, run_dir: Path, accelerator: Any, model: Any, tokenizer: Any, data: Any) -> Optional[Path]:
    """Save the final adapter, tokenizer and lineage files into `<run dir>/adapter` (collective; rank 0 writes).

    Returns:
        The folder on rank 0, None on the other ranks.
    """
    import yaml

    full = accelerator.get_state_dict(model)  # collective under FSDP/DeepSpeed
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    folder = run_dir / "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    accelerator.unwrap_model(model).save_pretrained(folder, state_dict=full, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    lineage = folder / "llmops"
    lineage.mkdir(exist_ok=True)
    (lineage / "config.yaml").write_text(yaml.safe_dump(config.resolved(), sort_keys=False))
    (lineage / "dataset.json").write_text(json.dumps(data.fingerprint, indent=2))
    return folder


def lineage_tags(config: FinetuneConfig, config_path: Path, data: Any, result: Any) -> dict[str, str]:
    """The registry tags of a fine-tuned adapter: data, config and code it came from, and how training ended."""
    from llmops.registry.digest import json_digest

    tags = {
        "llmops.dataset_digest": json_digest(data.fingerprint),
        "llmops.config_digest": json_digest({k: v for k, v in config.resolved().items() if k != "checkpoint"}),
        "llmops.prompt_version": data.formatter.prompt_version,
        "llmops.git_commit": git_commit(config_path.resolve().parent),
        "llmops.train_steps": str(result.steps),
        "llmops.final_loss": f"{result.final_loss:.6g}",
        "llmops.finetune_config": str(config_path),
    }
    if result.eval_loss is not None:
        tags["llmops.eval_loss"] = f"{result.eval_loss:.6g}"
    from llmops.lineage.record import dataset_lineage_tags

    tags.update(dataset_lineage_tags(data.fingerprint))  # data path, digest, DVC pointer
    return tags


def register_finetune(config: FinetuneConfig, config_path: Path, folder: Path, data: Any, base: Any, tracker: Any,
                      result: Any, extra_tags: Optional[Mapping[str, str]] = None):
    """Register the saved adapter `folder` as a new version of `register.name` (rank 0).

    Args:
        extra_tags: more version tags (they win over `lineage_tags` on a clash).

    Returns:
        The registry's `ModelVersion`.
    """
    from llmops.registry import register_adapter

    tags = {**lineage_tags(config, config_path, data, result), **dict(extra_tags or {})}
    tracker.flush()
    version = register_adapter(
        config.model_name,
        folder,
        base=base.registry_ref,
        tags=tags,
        alias=config.register.alias,
        run_id=tracker.run_id,
        description=config.register.description,
        reason=f"fine-tune {config.name} (run {tracker.run_id})",
    )
    tracker.set_tags({"llmops.registered_version": version.ref})
    return version
