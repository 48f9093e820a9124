"""Inline SVG charts for the evaluation report: no script, no CDN, so a report opens offline.

Each function returns one `<svg>` element (with a `<title>` per mark for hover values) or "" when
there is nothing to draw.
"""

from __future__ import annotations

import html
from typing import Optional, Sequence

import numpy as np

__all__ = ["COLORS", "means_chart", "interval_chart", "histogram_chart"]

COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756")
"""Candidate, baseline, then further series."""

_LABEL_W = 170


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _svg(width: int, height: int, parts: list[str], label: str) -> str:
    return (f'<svg class="chart" role="img" aria-label="{html.escape(label)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _legend(names: Sequence[str], x: float, y: float) -> str:
    items = []
    for index, name in enumerate(names):
        items.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{COLORS[index % 4]}"/>'
                     f'<text x="{x + 14}" y="{y}" font-size="11">{html.escape(name)}</text>')
        x += 24 + 7 * len(name)
    return "".join(items)


def means_chart(labels: list[str], series: dict[str, list[tuple[Optional[float], Optional[float], Optional[float]]]],
                title: str, width: int = 560) -> str:
    """Horizontal bars of means on [0, 1] with their 95% interval as a whisker, one group per label.

    `series` maps a run name to one (mean, low, high) per label.
    """
    if not labels:
        return ""
    row, names = 14, list(series)
    plot_w = width - _LABEL_W - 50
    height = 46 + len(labels) * (row * len(names) + 8)
    parts = [f'<text x="4" y="14" font-size="12" font-weight="600">{html.escape(title)}</text>',
             _legend(names, _LABEL_W, 30)]
    y = 42
    for index, label in enumerate(labels):
        parts.append(f'<text x="4" y="{y + row * len(names) / 2 + 4:.1f}" font-size="11">{html.escape(label)}</text>')
        for s_index, name in enumerate(names):
            mean, low, high = series[name][index]
            color = COLORS[s_index % 4]
            w = 0.0 if mean is None else max(0.0, min(1.0, mean)) * plot_w
            text_x = _LABEL_W + max(w, (max(0.0, min(1.0, high)) * plot_w) if high is not None else 0.0) + 4
            parts.append(f'<rect x="{_LABEL_W}" y="{y}" width="{w:.1f}" height="{row - 3}" fill="{color}" opacity="0.85">'
                         f'<title>{html.escape(name)} {html.escape(label)}: {_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]</title></rect>')
            if low is not None and high is not None:
                x0, x1 = (_LABEL_W + max(0.0, min(1.0, v)) * plot_w for v in (low, high))
                mid = y + (row - 3) / 2
                parts.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{mid:.1f}" y2="{mid:.1f}" stroke="#222" stroke-width="1.2"/>')
            parts.append(f'<text x="{text_x:.1f}" y="{y + 9}" font-size="10">{_fmt(mean)}</text>')
            y += row
        y += 8
    for tick in (0.0, 0.5, 1.0):
        x = _LABEL_W + tick * plot_w
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="38" y2="{height - 8}" stroke="#ccc" stroke-dasharray="2,2"/>'
                     f'<text x="{x - 6:.1f}" y="{height - 1}" font-size="9">{tick:g}</text>')
    return _svg(width, height, parts, title)


def interval_chart(rows: list[tuple[str, float, float, float]], title: str, margin: Optional[float] = None,
                   width: int = 560) -> str:
    """A forest plot: each row's paired difference (point) and interval (line), with 0 and -margin marked.

    `rows` are (label, estimate, low, high); the axis spans every interval, 0 and -margin.
    """
    rows = [r for r in rows if all(np.isfinite(v) for v in r[1:])]
    if not rows:
        return ""
    row_h, plot_w = 22, width - _LABEL_W - 30
    height = 48 + row_h * len(rows) + 18
    marks = [0.0] + ([-margin] if margin is not None else [])
    lo = min(min(r[2] for r in rows), *marks)
    hi = max(max(r[3] for r in rows), *marks)
    pad = max(0.02, (hi - lo) * 0.08)
    lo, hi = lo - pad, hi + pad

    def x_of(value: float) -> float:
        return _LABEL_W + (value - lo) / (hi - lo) * plot_w

    parts = [f'<text x="4" y="14" font-size="12" font-weight="600">{html.escape(title)}</text>']
    lines = [(0.0, "0", "none", 32)] + ([(-margin, f"-margin ({-margin:g})", "4,3", height - 3)] if margin is not None else [])
    for value, name, dash, text_y in lines:  # 0 is labelled above the rows, -margin below them
        x = x_of(value)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="36" y2="{height - 16}" stroke="#888" stroke-dasharray="{dash}"/>'
                     f'<text x="{x:.1f}" y="{text_y}" font-size="9" text-anchor="middle">{html.escape(name)}</text>')
    for index, (label, estimate, low, high) in enumerate(rows):
        y = 48 + index * row_h
        bad = margin is not None and high < -margin
        good = margin is None or low > -margin
        color = "#2e7d32" if good else ("#c62828" if bad else "#ef6c00")
        parts.append(f'<text x="4" y="{y + 4}" font-size="11">{html.escape(label)}</text>'
                     f'<line x1="{x_of(low):.1f}" x2="{x_of(high):.1f}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="3">'
                     f'<title>{html.escape(label)}: {estimate:+.3f} [{low:+.3f}, {high:+.3f}]</title></line>'
                     f'<circle cx="{x_of(estimate):.1f}" cy="{y}" r="4.5" fill="{color}"/>')
    return _svg(width, height, parts, title)


def histogram_chart(series: dict[str, list[float]], title: str, width: int = 560, height: int = 170) -> str:
    """Side-by-side histograms (10 bins over the joint range) of one score per run."""
    values = [v for vs in series.values() for v in vs]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 11)
    counts = {name: np.histogram(vs, bins)[0] for name, vs in series.items()}
    top = max(max(int(c.max()) for c in counts.values()), 1)
    plot_w = width - 60
    bar_w = plot_w / (len(bins) - 1) / len(series)
    parts = [f'<text x="4" y="14" font-size="12" font-weight="600">{html.escape(title)}</text>',
             _legend(list(series), 200, 14)]
    for s_index, (name, c) in enumerate(counts.items()):
        for b_index, count in enumerate(c):
            h = (height - 50) * count / top
            x = 40 + b_index * bar_w * len(series) + s_index * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{height - 20 - h:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{COLORS[s_index % 4]}"><title>{html.escape(name)}: {count} items in '
                         f'[{bins[b_index]:.3g}, {bins[b_index + 1]:.3g})</title></rect>')
    parts.append(f'<text x="40" y="{height - 5}" font-size="9">{lo:.3g}</text>'
                 f'<text x="{width - 40}" y="{height - 5}" font-size="9">{hi:.3g}</text>'
                 f'<text x="4" y="{height - 20}" font-size="9">0</text><text x="4" y="34" font-size="9">{top}</text>')
    return _svg(width, height, parts, title)
