"""`llmops finetune CONFIG [key.sub=value ...] [--preview N] [--num-processes N]`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from llmops.cli._output import console


def finetune(
    config: Path = typer.Argument(..., help="Fine-tune config (YAML), e.g. configs/finetune/quickstart.yaml."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY.SUB=VALUE]...", help="Config overrides, e.g. training.max_steps=20."),
    preview: Optional[int] = typer.Option(None, "--preview", min=1, help="Print N formatted examples with the trained tokens marked; train nothing."),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", min=1, help="Data-parallel processes on this machine (torchrun; gloo on CPU)."),
) -> None:
    """Train a LoRA adapter as CONFIG says and register it in the model registry."""
    overrides = list(overrides or [])
    if preview is not None:
        from llmops.finetune.preview import preview as run_preview

        run_preview(config, overrides, preview, console)
        return
    from llmops.finetune.launch import inside_launch, launch, launch_command
    from llmops.finetune.schema import load_finetune_config

    loaded = load_finetune_config(config, overrides)  # fail fast, before any process starts
    command = None if inside_launch() else launch_command(loaded, config, overrides, num_processes)
    if command is None:
        from llmops.finetune.job import format_result, run_finetune

        result = run_finetune(config, overrides)
        console.print(format_result(result), markup=False)
        return
    launch(command, num_processes or loaded.distributed.num_processes or 1)


def register(root_app: typer.Typer) -> None:
    """Add the `finetune` command to the root app."""
    root_app.command("finetune")(finetune)
