"""`llmops monitor`: continuous training from retraining triggers."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from llmops.cli._output import console


def monitor(
    config: Path = typer.Option(Path("serving/monitor.yaml"), "--config", "-c", help="Monitor config."),
    once: bool = typer.Option(False, "--once", help="Run one cycle and exit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report which triggers would fire."),
) -> None:
    """Check the retraining triggers; when one fires, fine-tune, evaluate and promote through the gate."""
    from llmops.config import load_config
    from llmops.monitor import MonitorConfig, run_monitor_once

    settings = load_config(config, MonitorConfig)
    while True:
        decision = run_monitor_once(settings, dry_run=dry_run)
        for check in decision.checks:
            mark = "[red]fires[/red]" if check.fired else "[green]quiet[/green]"
            console.print(f"{check.name:9} {mark}  {check.reason}")
        if decision.fired and dry_run:
            console.print(f"dry run: would fine-tune and promote ({', '.join(decision.fired)})")
        elif decision.version:
            result = "promoted" if decision.promoted else "not promoted"
            console.print(f"registered {decision.version}; gate {decision.verdict}: {result} to {settings.model}@{settings.alias}")
        console.print(f"decision logged: mlflow run {decision.run_id} (experiment llmops-monitor)")
        if once:
            return
        time.sleep(settings.interval)


def register(root_app: typer.Typer) -> None:
    root_app.command("monitor")(monitor)
