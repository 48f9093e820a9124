"""Evaluation outputs: items.jsonl, summary.json, a self-contained report.html, and a terminal table."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmops.evaluation.runner import EvalResult

__all__ = ["write_results", "print_summary", "render_html"]

_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756")


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


def print_summary(result: EvalResult, baseline: Optional[EvalResult] = None) -> None:
    """A rich table: each scorer's mean and 95% CI (and the baseline's, when given)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.suite} v{result.suite_version} on {result.model_version or result.model_ref}", box=None)
    table.add_column("scorer")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    table.add_column("unmeasured", justify="right")
    if baseline is not None:
        table.add_column(f"baseline {baseline.model_version or baseline.model_ref}", justify="right")
    for key, s in result.summaries.items():
        row = [key, _fmt(s.mean), f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]", str(s.measured), f"{s.unmeasured_rate:.0%}"]
        if baseline is not None:
            row.append(_fmt(baseline.summaries[key].mean))
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"{len(result.items)} items, {result.generated} generated, {result.cached} from cache, {result.seconds:.1f} s")


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _histogram_svg(series: dict[str, list[float]], title: str, width: int = 420, height: int = 180) -> str:
    values = [v for vs in series.values() for v in vs]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 11)
    counts = {name: np.histogram(vs, bins)[0] for name, vs in series.items()}
    top = max(max(c.max() for c in counts.values()), 1)
    bar_w = (width - 40) / (len(bins) - 1) / len(series)
    parts = []
    for s_index, (name, c) in enumerate(counts.items()):
        for b_index, count in enumerate(c):
            h = (height - 40) * count / top
            x = 30 + b_index * bar_w * len(series) + s_index * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{height - 20 - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                         f'fill="{_COLORS[s_index % 4]}"><title>{html.escape(name)}: {count}</title></rect>')
    legend = " ".join(f'<tspan fill="{_COLORS[i % 4]}">■ {html.escape(n)}</tspan>' for i, n in enumerate(series))
    parts.append(f'<text x="30" y="{height - 4}" font-size="10">{lo:.3g}</text>'
                 f'<text x="{width - 40}" y="{height - 4}" font-size="10">{hi:.3g}</text>'
                 f'<text x="30" y="12" font-size="11">{html.escape(title)} {legend}</text>')
    return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'


def _bars_svg(labels: list[str], series: dict[str, list[Optional[float]]], title: str, width: int = 520) -> str:
    row_h, height = 16, 30 + 16 * len(labels) * max(1, len(series)) + 10
    parts = [f'<text x="4" y="12" font-size="11">{html.escape(title)}</text>']
    y = 22
    for index, label in enumerate(labels):
        for s_index, (name, values) in enumerate(series.items()):
            value = values[index]
            w = 0 if value is None else max(0.0, min(1.0, value)) * (width - 200)
            parts.append(f'<text x="4" y="{y + 11}" font-size="10">{html.escape(label if s_index == 0 else "")}</text>'
                         f'<rect x="150" y="{y}" width="{w:.1f}" height="{row_h - 3}" fill="{_COLORS[s_index % 4]}">'
                         f'<title>{html.escape(name)}: {_fmt(value)}</title></rect>'
                         f'<text x="{154 + w:.1f}" y="{y + 11}" font-size="10">{_fmt(value)}</text>')
            y += row_h
    return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'


def render_html(result: EvalResult, baseline: Optional[EvalResult] = None, verdict: Optional[dict[str, Any]] = None) -> str:
    """A self-contained HTML page: summary, gate verdict, plots, and the first items side by side."""
    runs = {result.model_version or result.model_ref: result}
    if baseline is not None:
        runs[f"baseline {baseline.model_version or baseline.model_ref}"] = baseline
    plots = []
    for key in result.summaries:
        plots.append(_histogram_svg({name: [v for v in r.scores(key).values() if v is not None] for name, r in runs.items()},
                                    f"{key}: distribution"))
    quality = [k for k, s in result.summaries.items() if s.quality]
    plots.append(_bars_svg(quality, {n: [r.summaries[k].mean for k in quality] for n, r in runs.items()}, "mean per scorer"))
    for field_name, groups in result.slices.items():
        primary = quality[0] if quality else next(iter(result.summaries))
        labels = list(groups)
        series = {n: [r.slices.get(field_name, {}).get(g, {}).get(primary) for g in labels] for n, r in runs.items()}
        plots.append(_bars_svg([f"{field_name}={g}" for g in labels], series, f"{primary} per slice"))
    rows = []
    base_answers = {i.item_id: i.answers[0] for i in baseline.items} if baseline else {}
    for item in result.items[:200]:
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            item.item_id, json.dumps(item.row, ensure_ascii=False)[:160], item.answers[0][:160],
            base_answers.get(item.item_id, "")[:160], ", ".join(f"{k}={_fmt(v)}" for k, v in item.scores.items()))) + "</tr>")
    gate_html = ""
    if verdict is not None:
        gate_html = (f"<h2>Gate: {html.escape(verdict['verdict'])}</h2><ul>"
                     + "".join(f"<li>{html.escape(r)}</li>" for r in verdict["reasons"]) + "</ul>")
    summary = html.escape(json.dumps(result.summary_dict()["scorers"], indent=2, default=str))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(result.suite)} evaluation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}td{{border-bottom:1px solid #ddd;padding:2px 6px;font-size:12px;vertical-align:top}}
svg{{margin:6px;border:1px solid #eee}}</style></head><body>
<h1>{html.escape(result.suite)} v{html.escape(result.suite_version)}</h1>
<p>model <b>{html.escape(str(result.model_version or result.model_ref))}</b>, prompt {html.escape(str(result.prompt_ref or "inline"))},
{len(result.items)} items ({result.generated} generated, {result.cached} cached)</p>
{gate_html}<div>{"".join(plots)}</div><h2>Scorers</h2><pre>{summary}</pre>
<h2>Items</h2><table><tr><th>id</th><th>row</th><th>answer</th><th>baseline answer</th><th>scores</th></tr>{"".join(rows)}</table>
</body></html>"""
