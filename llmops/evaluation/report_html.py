"""report.html: one self-contained page for people (verdict first, tables, inline SVG charts, item filter).

Nothing is loaded from the network, so the report opens offline and from a CI artifact.
"""

from __future__ import annotations

import html
from typing import Any, Optional

from llmops.evaluation.charts import histogram_chart, interval_chart, means_chart
from llmops.evaluation.comparison import compare_scorers, compare_slices, items_disagreeing_first
from llmops.evaluation.results import EvalResult

__all__ = ["render_html"]

MAX_ITEMS = 2000
"""Items listed in the page (disagreeing ones first); every item is in items.jsonl."""

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1180px;color:#1d1d1f;padding:0 16px}
h1{margin:0 0 4px;font-size:24px}h2{font-size:18px;margin:28px 0 8px}.sub{color:#555;margin:0 0 16px}
.verdict{border-radius:8px;padding:12px 18px;border:1px solid}.verdict h2{margin:0 0 6px;font-size:22px}
.v-pass{background:#e8f5e9;border-color:#66bb6a}.v-fail{background:#ffebee;border-color:#ef5350}
.v-investigate{background:#fff8e1;border-color:#ffb300}.v-none{background:#f3f4f6;border-color:#bbb}
.verdict ul{margin:4px 0 0 18px;padding:0}.key{font-variant-numeric:tabular-nums;color:#333}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th{text-align:left;background:#f3f4f6;position:sticky;top:0}th,td{border-bottom:1px solid #e2e2e2;padding:4px 8px;vertical-align:top}
td.num{text-align:right;white-space:nowrap}#scorer-table{width:auto;min-width:60%}.checks{font-size:13px}
.verdict p.muted{margin:8px 0 0}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{border:1px solid #e5e5e5;border-radius:6px;background:#fff}
tr.disagree td:first-child{border-left:4px solid #ef6c00}.field{display:inline-block;margin-right:10px}
.field b{color:#555;font-weight:600}.answer{white-space:pre-wrap;max-width:300px}.muted{color:#777}
.controls{display:flex;gap:16px;align-items:center;margin:6px 0 10px}#filter{font-size:14px;padding:6px 10px;width:320px}
.bad{color:#c62828;font-weight:600}.good{color:#2e7d32}
"""

_SCRIPT = """
(function(){
  var box=document.getElementById('filter'), only=document.getElementById('only-disagree'),
      shown=document.getElementById('shown'), rows=document.querySelectorAll('#items tbody tr');
  function apply(){
    var q=box.value.trim().toLowerCase(), n=0;
    rows.forEach(function(r){
      var ok=(!q||r.textContent.toLowerCase().indexOf(q)>=0)&&(!only.checked||r.classList.contains('disagree'));
      r.style.display=ok?'':'none'; if(ok){n++;}
    });
    shown.textContent=n+' of '+rows.length+' items shown';
  }
  box.addEventListener('input',apply); only.addEventListener('change',apply); apply();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _ci(low: Optional[float], high: Optional[float], signed: bool = False) -> str:
    return "-" if low is None or high is None else f"[{_num(low, signed)}, {_num(high, signed)}]"


def _plain(value: Any) -> str:
    """A row value as text people read (nested values as key: value lists, never JSON)."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _verdict_section(verdict: Optional[dict[str, Any]]) -> str:
    if verdict is None:
        return ('<section id="verdict" class="verdict v-none"><h2>No gate decision</h2>'
                "<p>The suite has no <code>gate:</code> block; this page describes one run.</p></section>")
    key = ""
    if verdict.get("delta") is not None:
        key = (f'<p class="key">{_e(verdict["primary"])}: paired delta {_num(verdict["delta"], True)}, '
               f'{verdict.get("level") or 0:.0%} interval {_ci(verdict["ci_low"], verdict["ci_high"], True)} '
               f'({_e(verdict.get("method") or "")}), margin {verdict["margin"]:g}, alpha {verdict.get("alpha", 0.05):g} per side, '
               f'{verdict["items"]} paired items</p>')
    reasons = "".join(f"<li>{_e(r)}</li>" for r in verdict["reasons"])
    checks = "".join(
        f'<li class="{"good" if c["ok"] else "bad"}">{_e(c["scorer"])}: {_e(c["rule"])} '
        f'(value {_num(c["value"])}) {"holds" if c["ok"] else "does not hold"}</li>' for c in verdict.get("hard", []))
    checks = f'<p class="muted">Limits:</p><ul class="checks">{checks}</ul>' if checks else ""
    return (f'<section id="verdict" class="verdict v-{_e(verdict["verdict"])}"><h2>Gate: {_e(verdict["verdict"])}</h2>'
            f"{key}<ul>{reasons}</ul>{checks}</section>")


def _scorer_table(rows, has_baseline: bool, level: float) -> str:
    head = "<th>scorer</th><th>candidate mean</th><th>95% CI</th><th>n</th>"
    if has_baseline:
        head += f"<th>baseline mean</th><th>95% CI</th><th>n</th><th>paired delta</th><th>{level:.0%} interval</th><th>method</th>"
    body = []
    for row in rows:
        c = row.candidate
        n = f"{c.measured}" + (f' <span class="muted">({c.unmeasured} unmeasured)</span>' if c.unmeasured else "")
        cells = [f"<td>{_e(row.scorer)}</td>", f'<td class="num">{_num(c.mean)}</td>',
                 f'<td class="num">{_ci(c.ci_low, c.ci_high)}</td>', f'<td class="num">{n}</td>']
        if has_baseline:
            b, p = row.baseline, row.paired
            cells += [f'<td class="num">{_num(b.mean if b else None)}</td>',
                      f'<td class="num">{_ci(b.ci_low, b.ci_high) if b else "-"}</td>',
                      f'<td class="num">{b.measured if b else "-"}</td>',
                      f'<td class="num">{_num(p.mean if p else None, True)}</td>',
                      f'<td class="num">{_ci(p.low, p.high, True) if p else "-"}</td>',
                      f'<td>{_e(p.method) if p else "-"}</td>']
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="scorer-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _slice_table(rows: list[dict[str, Any]], gate_slices: dict[str, dict[str, Any]], level: float) -> str:
    body = []
    for row in rows:
        gate = gate_slices.get(row["slice"], {})
        status = ("<span class='bad'>regressed</span>" if gate.get("regressed") else
                  "tested, holds" if gate.get("tested") else _e(gate.get("note", "not gated")))
        p = row["paired"]
        body.append(f"<tr><td>{_e(row['slice'])}</td><td class='num'>{row['items']}</td>"
                    f"<td class='num'>{_num(row['candidate'])}</td><td class='num'>{_num(row['baseline'])}</td>"
                    f"<td class='num'>{_num(p.mean if p else None, True)}</td>"
                    f"<td class='num'>{_ci(p.low, p.high, True) if p else '-'}</td><td>{status}</td></tr>")
    return ('<table id="slice-table"><thead><tr><th>slice</th><th>items</th><th>candidate</th><th>baseline</th>'
            f'<th>paired delta</th><th>{level:.0%} interval</th><th>gate</th></tr></thead><tbody>{"".join(body)}</tbody></table>')


def _items_table(result: EvalResult, baseline: Optional[EvalResult], scorers: list[str]) -> str:
    rows = []
    for item, other, disagree in items_disagreeing_first(result, baseline, scorers)[:MAX_ITEMS]:
        fields = "".join(f'<span class="field"><b>{_e(k)}:</b> {_e(_plain(v))}</span>' for k, v in item.row.items())
        scores = "<br>".join(
            f"{_e(k)}: {_num(v)}" + (f" / {_num(other.scores.get(k))}" if other is not None else "")
            for k, v in item.scores.items())
        base_answer = _e(other.answers[0]) if other is not None and other.answers else '<span class="muted">-</span>'
        base_cell = f'<td class="answer">{base_answer}</td>' if baseline is not None else ""
        rows.append(f'<tr class="{"disagree" if disagree else "agree"}"><td>{_e(item.item_id)}</td><td>{fields}</td>'
                    f'<td class="answer">{_e(item.answers[0] if item.answers else "")}</td>'
                    f'{base_cell}<td class="num">{scores}</td></tr>')
    more = (f'<p class="muted">The first {MAX_ITEMS} of {len(result.items)} items; all are in items.jsonl.</p>'
            if len(result.items) > MAX_ITEMS else "")
    score_head = "scores (candidate / baseline)" if baseline is not None else "scores"
    base_head = "<th>baseline answer</th>" if baseline is not None else ""
    return (f'<table id="items"><thead><tr><th>item</th><th>fields</th><th>candidate answer</th>{base_head}'
            f'<th>{score_head}</th></tr></thead><tbody>{"".join(rows)}</tbody></table>{more}')


def render_html(result: EvalResult, baseline: Optional[EvalResult] = None, verdict: Optional[dict[str, Any]] = None) -> str:
    """The report page: verdict and reason at the top, scorer table, charts, slices, items (disagreeing first)."""
    alpha = float(verdict.get("alpha", 0.05)) if verdict else 0.05
    margin = float(verdict["margin"]) if verdict and baseline is not None else None
    level = 1 - 2 * alpha
    quality = [k for k, s in result.summaries.items() if s.quality]
    primary = verdict["primary"] if verdict else (quality[0] if quality else next(iter(result.summaries)))
    comparisons = compare_scorers(result, baseline, alpha)
    cand_name = str(result.model_version or result.model_ref)
    names = {"candidate " + cand_name: result}
    if baseline is not None:
        names["baseline " + str(baseline.model_version or baseline.model_ref)] = baseline
    charts = [means_chart(quality, {n: [(r.summaries[k].mean, r.summaries[k].ci_low, r.summaries[k].ci_high)
                                        if k in r.summaries else (None, None, None) for k in quality]
                                    for n, r in names.items()}, "mean per scorer (95% CI)")]
    if baseline is not None:
        deltas = [(c.scorer, c.paired.mean, c.paired.low, c.paired.high) for c in comparisons
                  if c.paired is not None and c.candidate.quality]
        charts.append(interval_chart(deltas, f"paired delta, candidate - baseline ({level:.0%} interval)", margin))
    for key, summary in result.summaries.items():
        if not summary.quality:
            charts.append(histogram_chart({n: [v for v in r.scores(key).values() if v is not None]
                                           for n, r in names.items()}, f"{key}: distribution"))
    slices = compare_slices(result, baseline, primary, alpha)
    gate_slices = {s["slice"]: s for s in (verdict or {}).get("slices", [])}
    slice_html = ""
    if slices:
        slice_chart = interval_chart([(r["slice"], r["paired"].mean, r["paired"].low, r["paired"].high)
                                      for r in slices if r["paired"] is not None], f"{primary} per slice: paired delta", margin)
        slice_html = f'<section id="slices"><h2>Slices ({_e(primary)})</h2>{_slice_table(slices, gate_slices, level)}' \
                     f'<div class="charts">{slice_chart}</div></section>'
    disagreeing = sum(1 for _, _, d in items_disagreeing_first(result, baseline, quality) if d)
    baseline_line = (f", baseline <b>{_e(baseline.model_version or baseline.model_ref)}</b>" if baseline is not None else "")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(result.suite)} evaluation</title>
<style>{_STYLE}</style></head><body>
<h1>{_e(result.suite)} v{_e(result.suite_version)}</h1>
<p class="sub">candidate <b>{_e(cand_name)}</b>{baseline_line}, prompt {_e(result.prompt_ref or "inline")},
{len(result.items)} items ({result.generated} generated, {result.cached} from cache)</p>
{_verdict_section(verdict)}
<section id="scorers"><h2>Scorers</h2>{_scorer_table(comparisons, baseline is not None, level)}</section>
<section id="charts"><h2>Charts</h2><div class="charts">{"".join(c for c in charts if c)}</div></section>
{slice_html}
<section id="item-list"><h2>Items</h2>
<div class="controls"><input id="filter" type="search" placeholder="Filter items by any text" aria-label="filter items">
<label{"" if baseline is not None else ' hidden'}><input id="only-disagree" type="checkbox"> only items where candidate and baseline disagree ({disagreeing})</label>
<span id="shown" class="muted"></span></div>
{_items_table(result, baseline, quality)}</section>
<script>{_SCRIPT}</script></body></html>"""
