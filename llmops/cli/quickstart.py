"""`llmops quickstart`: the whole lifecycle on the embedded tiny model."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer

from llmops.cli._output import console


def quickstart(
    workdir: Path = typer.Option(Path("quickstart"), "--workdir", help="Folder for the store, models, configs and reports."),
) -> None:
    """Run the lifecycle offline: tiny base, prompt, fine-tune, eval, gated promotion, serving, drift."""
    import os

    # One torch thread is the fast setting for the tiny model on small CPUs (set before torch loads).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from llmops.quickstart import run_quickstart

    started = time.monotonic()

    @contextlib.contextmanager
    def step(title: str):
        begin = time.monotonic()
        with console.status(f"[bold]{title}[/bold] ..."):
            yield
        console.print(f"[green]done[/green] {title} ({time.monotonic() - begin:.0f} s)")

    summary = run_quickstart(workdir, step)
    _print_summary(summary, time.monotonic() - started)


def _print_summary(summary, seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"quickstart finished in {seconds:.0f} s", box=None, show_header=False)
    before = "-" if summary.score_before is None else f"{summary.score_before:.2f}"
    after = "-" if summary.score_after is None else f"{summary.score_after:.2f}"
    rows = [
        ("base model", summary.base),
        ("prompt", summary.prompt),
        ("fine-tuned", summary.candidate),
        ("exact match", f"{before} (base) -> {after} (adapter)"),
        ("gate", f"{summary.verdict}; " + ("promoted to quickstart@production" if summary.promoted else "alias unchanged")),
        ("drift", f"{summary.drift.get('requests')} captured requests: token JS divergence "
                  f"{summary.drift.get('js_divergence_bits')} bits, p={summary.drift.get('p_value') or float('nan'):.3g}, "
                  f"drift={'yes' if summary.drift.get('drift') else 'no'}"),
    ]
    for name, value in rows:
        table.add_row(f"[bold]{name}[/bold]", str(value))
    console.print(table)
    for question, answer in summary.answers:
        console.print(f"  Q: {question}\n  A: {answer}", markup=False)
    for name, path in summary.reports.items():
        console.print(f"{name} report: {path}")
    console.print(f"registry: {summary.store}", markup=False)
    console.print(f"browse runs, traces and the registry: {summary.ui}", markup=False)


def register(root_app: typer.Typer) -> None:
    root_app.command("quickstart")(quickstart)
