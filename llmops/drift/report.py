"""Drift reports: `summary.json`, a self-contained HTML page with inline SVG plots, and an MLflow run.

Plots: the permutation null distribution with the observed statistic, the top drifting tokens,
and a 2-D PCA projection of both embedding sets. No plotting library: small hand-made SVG.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "pca_2d", "log_to_mlflow"]

_W, _H, _PAD = 560, 260, 36
_REF, _CUR = "#1f77b4", "#d62728"


def pca_2d(reference: np.ndarray, current: np.ndarray, max_rows: int = 1000, seed: int = 0):
    """Both sets projected on the first two principal axes of the pooled (subsampled) rows."""
    rng = np.random.default_rng(seed)
    ref = reference[rng.choice(len(reference), min(max_rows, len(reference)), replace=False)]
    cur = current[rng.choice(len(current), min(max_rows, len(current)), replace=False)]
    pooled = np.concatenate([ref, cur]).astype(np.float64)
    mean = pooled.mean(0)
    _, _, vt = np.linalg.svd(pooled - mean, full_matrices=False)
    axes = vt[:2].T if vt.shape[0] >= 2 else np.eye(pooled.shape[1], 2)
    return (ref - mean) @ axes, (cur - mean) @ axes


def _scale(values, lo, hi, out_lo, out_hi):
    span = (hi - lo) or 1.0
    return out_lo + (np.asarray(values, float) - lo) / span * (out_hi - out_lo)


def _svg(body: str, title: str) -> str:
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" '
            f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11">'
            f'<rect width="{_W}" height="{_H}" fill="white" stroke="#ccc"/>{body}</svg></figure>')


def null_plot(null: np.ndarray, observed: float, label: str) -> str:
    """Histogram of the permutation statistics with the observed value as a red line."""
    if null.size == 0:
        return ""
    lo, hi = float(min(null.min(), observed)), float(max(null.max(), observed))
    counts, edges = np.histogram(null, bins=40, range=(lo, hi if hi > lo else lo + 1e-12))
    xs = _scale(edges, edges[0], edges[-1], _PAD, _W - _PAD)
    ys = _scale(counts, 0, counts.max() or 1, _H - _PAD, _PAD)
    bars = "".join(f'<rect x="{xs[i]:.1f}" y="{ys[i]:.1f}" width="{max(xs[i + 1] - xs[i] - 1, 1):.1f}" '
                   f'height="{_H - _PAD - ys[i]:.1f}" fill="#9ecae1"/>' for i in range(len(counts)))
    x_obs = float(_scale([observed], edges[0], edges[-1], _PAD, _W - _PAD)[0])
    right = x_obs > _W / 2  # keep the label inside the picture
    body = (bars + f'<line x1="{x_obs:.1f}" x2="{x_obs:.1f}" y1="{_PAD - 10}" y2="{_H - _PAD}" stroke="{_CUR}" stroke-width="2"/>'
            f'<text x="{x_obs + (-4 if right else 4):.1f}" y="{_PAD - 12}" fill="{_CUR}" text-anchor="{"end" if right else "start"}">'
            f'observed {observed:.4g}</text>'
            f'<text x="{_PAD}" y="{_H - 10}">{lo:.3g}</text><text x="{_W - _PAD}" y="{_H - 10}" text-anchor="end">{hi:.3g}</text>')
    return _svg(body, f"Permutation null distribution of {label} ({null.size} permutations) and the observed value")


def scatter_plot(ref_xy: np.ndarray, cur_xy: np.ndarray) -> str:
    """2-D PCA projection: reference in blue, current in red."""
    both = np.concatenate([ref_xy, cur_xy])
    lo, hi = both.min(0), both.max(0)
    points = []
    for xy, color in ((ref_xy, _REF), (cur_xy, _CUR)):
        px = _scale(xy[:, 0], lo[0], hi[0], _PAD, _W - _PAD)
        py = _scale(xy[:, 1], lo[1], hi[1], _H - _PAD, _PAD)
        points += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{color}" fill-opacity="0.45"/>' for x, y in zip(px, py)]
    legend = (f'<text x="{_PAD}" y="16" fill="{_REF}">reference ({len(ref_xy)} shown)</text>'
              f'<text x="{_PAD + 200}" y="16" fill="{_CUR}">current ({len(cur_xy)} shown)</text>')
    return _svg("".join(points) + legend, "2-D PCA projection of both embedding sets")


def token_bar_plot(over: list[dict], under: list[dict]) -> str:
    """Share difference (current - reference) of the top over- and under-represented tokens."""
    rows = over + under
    if not rows:
        return ""
    diffs = np.array([row["current_share"] - row["reference_share"] for row in rows])
    height = 18 * len(rows) + 2 * _PAD
    limit = float(np.abs(diffs).max()) or 1.0
    mid = _W / 2
    bars = []
    for i, (row, diff) in enumerate(zip(rows, diffs)):
        y = _PAD + 18 * i
        width = abs(diff) / limit * (mid - 130)
        x = mid if diff >= 0 else mid - width
        name = repr(row["text"]) if row.get("text") is not None else f"id {row['id']}"
        bars.append(f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="14" fill="{_CUR if diff > 0 else _REF}"/>'
                    f'<text x="{8 if diff >= 0 else _W - 8}" y="{y + 11}" text-anchor="{"start" if diff >= 0 else "end"}">'
                    f'{html.escape(name)} {diff:+.3%}</text>')
    body = "".join(bars) + f'<line x1="{mid}" x2="{mid}" y1="{_PAD - 4}" y2="{height - _PAD}" stroke="#555"/>'
    svg = _svg(body, "Top drifting tokens: share in current minus share in reference")
    return svg.replace(f'height="{_H}" viewBox="0 0 {_W} {_H}"', f'height="{height}" viewBox="0 0 {_W} {height}"').replace(
        f'<rect width="{_W}" height="{_H}"', f'<rect width="{_W}" height="{height}"')


def write_report(out_dir: str | Path, kind: str, summary: dict[str, Any], plots: list[str], inputs: dict[str, str]) -> dict[str, Path]:
    """Write `summary.json` and `report.html` into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "inputs": inputs, **summary}
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(payload, indent=2, default=float) + "\n", encoding="utf-8")
    verdict = "DRIFT DETECTED" if summary.get("drift") else "no drift detected"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in summary.items() if not isinstance(v, (list, dict)))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>llmops drift: {kind}</title>"
            "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}th{text-align:left;padding-right:1em}"
            "figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:.3em}.drift{color:#d62728}.ok{color:#2ca02c}</style></head><body>"
            f"<h1>{kind.capitalize()} drift</h1><p class='{'drift' if summary.get('drift') else 'ok'}'><b>{verdict}</b></p>"
            f"<p>reference: {html.escape(inputs.get('reference', ''))}<br>current: {html.escape(inputs.get('current', ''))}</p>"
            f"<table>{rows}</table>{''.join(plots)}</body></html>")
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return {"summary": summary_path, "html": html_path}


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def log_to_mlflow(kind: str, summary: dict[str, Any], paths: dict[str, Path], model_ref: str | None) -> str:
    """Log metrics and the report files to an MLflow run in experiment `llmops-drift`; returns the run id.

    With `model_ref`, the run is tagged `llmops.model_version=NAME/VERSION` of the resolved version.
    """
    import mlflow

    from llmops.registry import resolve_model_ref, store

    experiment_id = store.ensure_experiment("llmops-drift")  # also points MLflow at the store
    tags = {"llmops.drift.kind": kind}
    if model_ref:
        version = resolve_model_ref(model_ref)
        tags["llmops.model_version"] = f"{version.name}/{version.version}"
    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
    metrics["drift"] = float(bool(summary.get("drift")))
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-{kind}", tags=tags) as run:
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for path in paths.values():
            mlflow.log_artifact(str(path))
        return run.info.run_id
