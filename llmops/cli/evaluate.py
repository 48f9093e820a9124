"""`llmops eval run` and `llmops promote`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from llmops.cli._output import console

app = typer.Typer(help="Run evaluation suites against registry models.", no_args_is_help=True)


@app.command("run")
def run(
    suite: Path = typer.Argument(..., help="Suite YAML file."),
    model: Optional[str] = typer.Option(None, "--model", help="Model ref (default: the suite's `model`)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt ref overriding the suite's prompt."),
    gateway: Optional[str] = typer.Option(None, "--gateway", help="Gateway URL; default: the gateway code in-process."),
    gateway_config: Optional[Path] = typer.Option(None, "--gateway-config", help="Gateway config for in-process runs."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for items.jsonl, summary.json, report.html."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Generate every answer again."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log an MLflow run."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when the suite's absolute gate limits do not hold."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides of the suite."),
) -> None:
    """Evaluate one model ref on a suite."""
    from llmops.evaluation.gate import apply_gate
    from llmops.evaluation.report import print_summary, write_results
    from llmops.evaluation.runner import load_suite, run_suite

    extra = list(overrides or []) + ([f"prompt={prompt}"] if prompt else [])
    config = load_suite(suite, extra)
    result = run_suite(config, model, gateway, str(gateway_config) if gateway_config else None, use_cache=not no_cache)
    print_summary(result)
    verdict = apply_gate(config.gate, result, None).to_dict() if config.gate else None
    if out is not None:
        paths = write_results(out, result, verdict=verdict)
        console.print(f"report: {paths['report']}")
    else:
        paths = None
    if not no_mlflow:
        from llmops.evaluation.tracking import log_eval_run

        console.print(f"mlflow run: {log_eval_run(result, paths)}")
    if check and verdict and verdict["verdict"] == "fail":
        for reason in verdict["reasons"]:
            console.print(f"[red]{reason}[/red]")
        raise typer.Exit(1)


def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Option(..., "--version", help="Candidate version."),
    to: str = typer.Option(..., "--to", help="Alias to move, e.g. production."),
    suite: Path = typer.Option(..., "--suite", help="Suite with a `gate:` block."),
    force: bool = typer.Option(False, "--force", help="Move the alias whatever the verdict (needs --reason)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (recorded with the move)."),
    gateway: Optional[str] = typer.Option(None, "--gateway", help="Gateway URL; default: in-process."),
    gateway_config: Optional[Path] = typer.Option(None, "--gateway-config", help="Gateway config for in-process runs."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the report."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Generate every answer again."),
) -> None:
    """Move NAME@ALIAS to VERSION only if the suite's gate passes (exit 0 pass, 1 fail, 2 investigate)."""
    from llmops.evaluation.promote import promote as run_promotion
    from llmops.evaluation.report import print_summary

    outcome = run_promotion(name, version, to, suite, force, reason, gateway,
                            str(gateway_config) if gateway_config else None, out, use_cache=not no_cache)
    print_summary(outcome.candidate, outcome.baseline, outcome.verdict.alpha)
    verdict = outcome.verdict
    color = {"pass": "green", "fail": "red", "investigate": "yellow"}[verdict.verdict]
    console.print(f"gate: [{color}]{verdict.verdict}[/{color}]")
    for line in verdict.reasons:
        console.print(f"  {line}", markup=False)
    if outcome.moved:
        forced = " (forced)" if outcome.forced else ""
        console.print(f"{name}@{to} -> {version}{forced}")
    else:
        console.print(f"{name}@{to} unchanged")
    if outcome.conflict:
        typer.echo(f"error: {outcome.conflict}", err=True)
    raise typer.Exit(outcome.exit_code)


def register(root_app: typer.Typer) -> None:
    root_app.add_typer(app, name="eval")
    root_app.command("promote")(promote)
