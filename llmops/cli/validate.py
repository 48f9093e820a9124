"""`llmops validate FILE...`: check config files of any kind and report every error at once."""

from __future__ import annotations

from pathlib import Path

import typer

from llmops.errors import ConfigError


def validate(files: list[Path] = typer.Argument(..., help="Config files (fine-tune, eval suite, gateway, monitor).")) -> None:
    """Validate config files; print every problem with its file, line and key path."""
    from llmops.config import validate_file

    failures = 0
    for path in files:
        try:
            kind, config = validate_file(path)
        except ConfigError as error:
            failures += 1
            for message in error.errors:
                typer.echo(f"error: {message}", err=True)
        else:
            typer.echo(f"ok: {path} ({kind})")
            if kind == "finetune":
                failures += _report_attention(path, config)
    if failures:
        raise typer.Exit(1)


def _report_attention(path: Path, config) -> int:
    """Print the attention implementation this machine would use for a fine-tune config; 1 if it cannot."""
    from llmops.extras import has_cuda
    from llmops.finetune import FinetuneError
    from llmops.finetune.job import key_location
    from llmops.finetune.model import resolve_attention

    try:
        attention, reason = resolve_attention(config.model.attn_implementation, has_cuda())
    except FinetuneError as error:
        key, message = str(error).split(": ", 1)
        typer.echo(f"error: {key_location(path, key)}: {message}", err=True)
        return 1
    typer.echo(f"  attention: {attention} ({reason})")
    return 0
