"""`llmops models ...`: the tiny base model and the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from llmops.cli._output import console, print_fields

app = typer.Typer(help="Create the tiny base model; register, inspect and alias model versions.", no_args_is_help=True)


@app.command("create-tiny")
def create_tiny(
    path: Path = typer.Argument(..., help="Folder to write the model into."),
    seed: int = typer.Option(0, help="Seed of the weights (same seed, same bytes)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty folder."),
) -> None:
    """Build the offline, deterministic tiny Llama (tokenizer and chat template included)."""
    from llmops.tiny_model import create_tiny_model

    with console.status("building the tiny model"):
        out = create_tiny_model(path, seed=seed, overwrite=force)
    console.print(f"created tiny model in {out}")


@app.command("register-base")
def register_base(
    name: str = typer.Argument(..., help="Registered model name."),
    source: str = typer.Argument(..., help="Local model folder or hub id (org/name)."),
    revision: Optional[str] = typer.Option(None, help="Hub revision (commit or tag) to pin."),
    description: Optional[str] = typer.Option(None, help="Free text shown by `models show`."),
) -> None:
    """Register a base model version; its weights are referenced, not copied."""
    from llmops.registry import register_base_model

    version = register_base_model(name, source, revision=revision, description=description)
    console.print(f"registered {version.ref} (base, {version.source})")


@app.command("list")
def list_models(pattern: Optional[str] = typer.Argument(None, help="Only names containing this.")) -> None:
    """List registered models with their latest version and aliases."""
    from rich.table import Table

    from llmops.registry import search_models

    models = search_models(pattern)
    if not models:
        console.print("no models registered yet (try `llmops models register-base`)")
        return
    table = Table("name", "latest", "kind", "aliases", box=None, pad_edge=False)
    for model in models:
        aliases = ", ".join(f"{a}->{v}" for a, v in sorted(model.aliases.items()))
        table.add_row(model.name, str(model.latest_version or "-"), model.kind or "-", aliases or "-")
    console.print(table)


@app.command("show")
def show(ref: str = typer.Argument(..., help="NAME, NAME@ALIAS or NAME/VERSION.")) -> None:
    """Show a model version: kind, source, lineage tags and aliases."""
    from llmops.registry import resolve_model_ref

    version = resolve_model_ref(ref)
    shown = {"llmops.kind", "llmops.source", "llmops.revision", "llmops.base"}
    lineage = {k.removeprefix("llmops."): v for k, v in version.tags.items() if k.startswith("llmops.") and k not in shown}
    other = {k: v for k, v in version.tags.items() if not k.startswith("llmops.")}
    print_fields(
        [
            ("ref", version.ref),
            ("kind", version.kind),
            ("source", version.source),
            ("revision", version.revision),
            ("base", version.base),
            ("aliases", ", ".join(version.aliases)),
            ("created", version.created.strftime("%Y-%m-%d %H:%M:%S UTC") if version.created else None),
            ("description", version.description),
            ("lineage", lineage),
            ("tags", other),
        ]
    )


@app.command("alias")
def alias(
    name: str = typer.Argument(..., help="Registered model name."),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="Alias to move, e.g. production."),
    version: int = typer.Argument(..., help="Version the alias should point at."),
    reason: Optional[str] = typer.Option(None, help="Why; recorded in the history."),
) -> None:
    """Move an alias to a version (atomically) and record the move."""
    from llmops.registry import set_model_alias

    event = set_model_alias(name, alias_name, version, reason=reason)
    before = "none" if event.from_version is None else event.from_version
    console.print(f"{name}@{alias_name} -> {event.to_version} (was {before})")


@app.command("history")
def history(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Print every alias move of a model, oldest first."""
    from llmops.registry import alias_history

    events = alias_history(name)
    if not events:
        console.print(f"no alias moves recorded for {name}")
    for event in events:
        console.print(event.describe(), markup=False)


@app.command("merge")
def merge(
    ref: str = typer.Argument(..., help="Adapter version: NAME, NAME@ALIAS or NAME/VERSION."),
    out_dir: Path = typer.Argument(..., help="Folder to write the merged model into."),
    register: Optional[str] = typer.Option(None, "--register", help="Register the merged model as a new version of this name."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Alias to move to the registered merged version."),
    dtype: str = typer.Option("float32", help="Saved weight dtype: float32, bfloat16 or float16."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder."),
) -> None:
    """Merge an adapter version into its base (for engines that serve merged weights)."""
    from llmops.finetune.merge import merge_adapter

    if dtype not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter("use float32, bfloat16 or float16", param_hint="--dtype")
    with console.status(f"merging {ref}"):
        result = merge_adapter(ref, out_dir, dtype=dtype, register_as=register, alias=alias, overwrite=force)
    console.print(f"merged {result.adapter_ref} into {result.base_ref}: {result.out_dir}", markup=False)
    if result.version:
        console.print(f"registered {result.version} (merged)" + (f", alias {alias}" if alias else ""), markup=False)
