"""`llmops lineage REF | --trace-id ID | --request-id ID` and `llmops reproduce REF [--out DIR]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from llmops.cli._output import console


def lineage(
    ref: Optional[str] = typer.Argument(None, help="Model reference: NAME, NAME@ALIAS or NAME/VERSION."),
    trace_id: Optional[str] = typer.Option(None, "--trace-id", help="Start from a gateway trace (x-llmops-trace-id)."),
    request_id: Optional[str] = typer.Option(None, "--request-id", help="Start from a gateway response's x-request-id."),
    as_json: bool = typer.Option(False, "--json", help="Print the lineage as JSON (full digests, the stored config YAML)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Hash the dataset and base files now to show whether they changed."),
) -> None:
    """Walk a served answer or a model version back to its base, data, config, prompt, run and evidence."""
    from llmops.lineage.walk import walk_lineage

    result = walk_lineage(ref, trace_id=trace_id, request_id=request_id, verify=verify)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    from llmops.lineage.render import lineage_tree

    console.print(lineage_tree(result))


def reproduce(
    ref: str = typer.Argument(..., help="The fine-tuned version to rebuild: NAME/VERSION or NAME@ALIAS."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder of the rebuild (default runs/reproduce-NAME-VERSION)."),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Eval suite for the score comparison (default: the suite of the version's last gated promotion)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Rebuild a fine-tuned version from its lineage (same base, data, prompt, config, seed) and compare."""
    import os

    # One torch thread, as the quickstart trains: thread count changes the order of float sums.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from llmops.lineage.reproduce import reproduce_version

    from rich.console import Console

    progress = Console(stderr=True, highlight=False)
    report = reproduce_version(ref, out=out, suite=suite, say=lambda line: progress.print(line, markup=False))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        for line in report.lines():
            console.print(line, markup=False, highlight=False)
    if not report.within_tolerance:
        raise typer.Exit(1)


def register(root_app: typer.Typer) -> None:
    """Add `lineage` and `reproduce` to the root app."""
    root_app.command("lineage")(lineage)
    root_app.command("reproduce")(reproduce)
