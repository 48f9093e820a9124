"""Evaluation outputs: items.jsonl, summary.json, a self-contained report.html, and a terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from llmops.evaluation.report_html import render_html
from llmops.evaluation.results import EvalResult

__all__ = ["write_results", "print_summary", "render_html"]


def write_results(out: str | Path, result: EvalResult, baseline: Optional[EvalResult] = None,
                  verdict: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """Write items.jsonl, summary.json and report.html into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"items": out / "items.jsonl", "summary": out / "summary.json", "report": out / "report.html"}
    with paths["items"].open("w", encoding="utf-8") as handle:
        for item in result.items:
            record = {"item_id": item.item_id, "item_hash": item.item_hash, "prompt_hash": item.prompt_hash,
                      "answers": item.answers, "scores": item.scores, "slices": item.slices, "row": item.row}
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    summary = result.summary_dict()
    if baseline is not None:
        summary["baseline"] = baseline.summary_dict()
    if verdict is not None:
        summary["gate"] = verdict
    paths["summary"].write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    paths["report"].write_text(render_html(result, baseline, verdict), encoding="utf-8")
    return paths


def print_summary(result: EvalResult, baseline: Optional[EvalResult] = None, alpha: float = 0.05) -> None:
    """A rich table: each scorer's mean and 95% CI; with a baseline, its mean and the paired delta's interval."""
    from rich.console import Console
    from rich.table import Table

    from llmops.evaluation.comparison import compare_scorers

    table = Table(title=f"{result.suite} v{result.suite_version} on {result.model_version or result.model_ref}", box=None)
    table.add_column("scorer")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    table.add_column("unmeasured", justify="right")
    if baseline is not None:
        table.add_column(f"baseline {baseline.model_version or baseline.model_ref}", justify="right")
        table.add_column("paired delta", justify="right")
        table.add_column(f"{1 - 2 * alpha:.0%} interval", justify="right")
    for row in compare_scorers(result, baseline, alpha):
        s = row.candidate
        cells = [row.scorer, _fmt(s.mean), f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]", str(s.measured), f"{s.unmeasured_rate:.0%}"]
        if baseline is not None:
            p = row.paired
            cells += [_fmt(row.baseline.mean if row.baseline else None), f"{p.mean:+.3f}" if p else "-",
                      f"[{p.low:+.3f}, {p.high:+.3f}]" if p else "-"]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    console.print(f"{len(result.items)} items, {result.generated} generated, {result.cached} from cache, {result.seconds:.1f} s")


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"
