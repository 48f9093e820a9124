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
            kind, _ = validate_file(path)
        except ConfigError as error:
            failures += 1
            for message in error.errors:
                typer.echo(f"error: {message}", err=True)
        else:
            typer.echo(f"ok: {path} ({kind})")
    if failures:
        raise typer.Exit(1)
