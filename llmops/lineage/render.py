"""The terminal tree of a lineage (`llmops lineage REF`), drawn from `walk_lineage`'s data."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["lineage_tree"]


def _short(digest: Optional[str], width: int = 19) -> str:
    """`sha256:765a55fec7f2…`: enough to compare by eye; `--json` has the full digest."""
    if not digest:
        return "-"
    return digest if len(digest) <= width else digest[:width] + "…"


def _state(entry: dict[str, Any]) -> str:
    state = entry.get("state")
    if state is None:
        return ""
    colour = {"unchanged": "green", "changed": "red", "missing": "red"}.get(state, "yellow")
    extra = ""
    if state == "changed" and entry.get("now"):
        extra = f": now {_short(entry['now'])}"
        if entry.get("rows_now") is not None:
            extra += f", {entry['rows_now']} rows"
    return f"  [{colour}]({state}{extra})[/{colour}]"


def _fmt_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


def lineage_tree(lineage: dict[str, Any]):
    """A `rich.tree.Tree` of the lineage, top-down from the served answer to the alias history."""
    from rich.tree import Tree

    model = lineage["model"]
    aliases = ", ".join(model["aliases"]) or "no alias"
    tree = Tree(f"[bold]{_esc(model['ref'])}[/bold]  {model['kind']} ({_esc(aliases)})"
                + (f"  reproduces {_esc(model['reproduces'])}" if model.get("reproduces") else ""))
    trace = lineage.get("trace")
    if trace:
        node = tree.add(f"[bold]served answer[/bold]  trace {_esc(trace['trace_id'])}")
        node.add(f"request id {_esc(trace['request_id'] or '-')}  at {trace['time'] or '-'}  status {trace['status']}")
        node.add(f"model {_esc(trace['model'] or '-')} -> {_esc(trace['model_version'])}"
                 + (f"  prompt {_esc(trace['prompt_version'])}" if trace.get("prompt_version") else ""))
        if trace.get("others"):
            node.add(f"[yellow]{len(trace['others'])} older trace(s) carry the same request id[/yellow]")
    if model["kind"] != "base":
        tree.add(f"[bold]adapter[/bold]  {_short(model['digest'])}  {_esc(model['source'])}")
    base = lineage.get("base")
    if base:
        node = tree.add(f"[bold]base[/bold]  {_esc(base['ref'])}  {_short(base.get('digest'))}{_state(base)}")
        if base.get("source"):
            revision = f"  revision {_esc(base['revision'])}" if base.get("revision") else ""
            node.add(f"source {_esc(base['source'])}{revision}")
    for split, data in (lineage.get("datasets") or {}).items():
        node = tree.add(f"[bold]dataset ({split})[/bold]  {_esc(data['path'])}  {_short(data.get('digest'))}{_state(data)}")
        counts = [f"{data[k]} {k.replace('_', ' ')}" for k in ("rows", "examples", "tokens", "trained_tokens") if k in data]
        if counts:
            node.add(", ".join(counts))
        dvc = data.get("dvc")
        if dvc:
            dvc_node = node.add(f"DVC  md5 {dvc['md5']}  pointer {_esc(dvc['pointer'])}")
            dvc_node.add(f"repo {_esc(dvc['repo'])}  remote {_esc(dvc.get('remote') or '-')}  "
                         f"rev {_esc((dvc.get('rev') or 'uncommitted')[:12])}")
    config = lineage.get("config")
    if config:
        where = config.get("artifact") or "(not stored)"
        node = tree.add(f"[bold]config[/bold]  {_short(config.get('digest'))}  {_esc(where)}")
        if config.get("file"):
            node.add(f"file {_esc(config['file'])}")
        summary = config.get("summary") or {}
        if summary:
            node.add("  ".join(f"{k} {_esc(_fmt_number(v))}" for k, v in summary.items() if v is not None))
    prompt = lineage.get("prompt")
    if prompt:
        node = tree.add(f"[bold]prompt[/bold]  {_esc(prompt['ref'])}"
                        + (f"  ({_esc(', '.join(prompt['aliases']))})" if prompt.get("aliases") else ""))
        if prompt.get("template") is not None:
            node.add(_esc(prompt["template"] if isinstance(prompt["template"], str) else repr(prompt["template"])))
    run = lineage.get("run")
    if run:
        node = tree.add(f"[bold]fine-tune run[/bold]  {_esc(run['run_id'])}  "
                        f"{_esc(run.get('experiment', '-'))}  {run.get('status', '-')}")
        node.add(f"git commit {_esc(run.get('git_commit') or '-')}  steps {run.get('train_steps') or '-'}  "
                 f"{run.get('start') or '-'} -> {run.get('end') or '-'}")
        metrics = run.get("metrics") or {}
        if metrics:
            node.add("  ".join(f"{k} {_fmt_number(v)}" for k, v in sorted(metrics.items())))
    for suite, scores in (lineage.get("evaluations") or {}).items():
        tree.add(f"[bold]eval {_esc(suite)}[/bold]  " + "  ".join(f"{k} {_esc(v)}" for k, v in scores.items()))
    evidence = tree.add(f"[bold]evidence of alias moves to version {model['version']}[/bold]")
    if not lineage.get("evidence"):
        evidence.add("(no alias ever pointed here)")
    for event in lineage.get("evidence") or []:
        _event_node(evidence, event)
    history = tree.add("[bold]alias history[/bold]")
    for event in lineage.get("alias_history") or []:
        before = "(none)" if event["from_version"] is None else event["from_version"]
        mark = "  [cyan]<- this version[/cyan]" if event["to_version"] == model["version"] else ""
        history.add(f"{event['time']}  {_esc(event['alias'])}: {before} -> {event['to_version']}  "
                    f"by {_esc(event['user'])}{mark}")
    for warning in lineage.get("warnings") or []:
        tree.add(f"[yellow]warning: {_esc(warning)}[/yellow]")
    return tree


def _event_node(parent: Any, event: dict[str, Any]) -> None:
    before = "(none)" if event["from_version"] is None else event["from_version"]
    node = parent.add(f"{_esc(event['alias'])}: {before} -> {event['to_version']}  {event['time']}  "
                      f"by {_esc(event['user'])}" + (f"  ({_esc(event['reason'])})" if event.get("reason") else ""))
    found = event.get("evidence") or {}
    if found.get("verdict"):
        ci = found.get("ci") or [None, None]
        if found.get("baseline"):
            compared = (f"delta {_fmt_number(found.get('delta'))}  CI [{_fmt_number(ci[0])}, {_fmt_number(ci[1])}]  "
                        f"margin {_fmt_number(found.get('margin'))}  against {_esc(found['baseline'])}")
        else:
            compared = f"no baseline (first holder of the alias; absolute checks only)  margin {_fmt_number(found.get('margin'))}"
        node.add(f"gate {found['verdict']} on suite {_esc(found.get('suite'))} v{_esc(found.get('suite_version'))}: "
                 + compared + ("  [red]forced[/red]" if found.get("forced") else ""))
    elif found:
        node.add("evidence " + ", ".join(f"{k}={_esc(v)}" for k, v in sorted(found.items())))
    data = event.get("suite_data")
    if data:
        digest = data.get("digest") or data.get("now")
        when = "" if data.get("recorded") else " (now)"
        node.add(f"suite {_esc(data.get('suite') or '-')}  dataset {_esc(data['path'])}  {_short(digest)}{when}{_state(data)}"
                 + (f"  DVC md5 {data['dvc']['md5']}" if data.get("dvc") else ""))
    for role, run in (event.get("eval_runs") or {}).items():
        if run is None:
            node.add(f"[yellow]{role} eval run is not in the store[/yellow]")
            continue
        means = "  ".join(f"{k} {_fmt_number(v)}" for k, v in sorted(run["metrics"].items()) if k.endswith(".mean"))
        node.add(f"{role} eval run {_esc(run['run_id'])}: {means}")
