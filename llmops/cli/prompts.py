"""`llmops prompts ...`: the versioned prompt registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from llmops.cli._output import console, parse_assignments, print_fields
from llmops.errors import LlmopsError

app = typer.Typer(help="Register, render, alias and diff versioned prompt templates.", no_args_is_help=True)


def _read_template_file(path: Path) -> tuple[Any, dict[str, Any]]:
    """A template file: plain text (Jinja), or YAML/JSON holding a message list or
    `{template | messages, model_config}`. Returns (template, model_config)."""
    from llmops.config import load_yaml

    if not path.is_file():
        raise LlmopsError(f"{path}: file not found")
    if path.suffix.lower() not in {".json", ".yaml", ".yml"}:
        return path.read_text(encoding="utf-8"), {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise LlmopsError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            data = load_yaml(path)  # raises with line and column
    if isinstance(data, list):
        return data, {}
    if isinstance(data, dict) and ("template" in data or "messages" in data):
        unknown = set(data) - {"template", "messages", "model_config"}
        if unknown:
            raise LlmopsError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (expected template or messages, model_config)")
        return data.get("template", data.get("messages")), dict(data.get("model_config") or {})
    raise LlmopsError(f"{path}: expected a list of messages or a mapping with 'template' or 'messages'")


@app.command("register")
def register(
    name: str = typer.Argument(..., help="Prompt name."),
    template: Optional[str] = typer.Option(None, "--template", "-t", help="Template text (Jinja: {{ variable }})."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Template file: text, or YAML/JSON messages."),
    alias: Optional[str] = typer.Option(None, help="Alias to point at the new version, e.g. production."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message."),
    param: list[str] = typer.Option([], "--param", "-p", help="Model parameter KEY=VALUE stored with the prompt (repeatable)."),
) -> None:
    """Register a new immutable prompt version."""
    import yaml

    from llmops.registry import register_prompt

    if (template is None) == (file is None):
        raise LlmopsError("give exactly one of --template TEXT and --file FILE")
    model_config: dict[str, Any] = {}
    if file is not None:
        template, model_config = _read_template_file(file)
    model_config.update({k: yaml.safe_load(v) for k, v in parse_assignments(param, "--param").items()})
    prompt = register_prompt(name, template, commit_message=message, model_config=model_config or None, alias=alias)
    suffix = f", alias {alias}" if alias else ""
    console.print(f"registered {prompt.ref}{suffix}")


@app.command("list")
def list_prompts(pattern: Optional[str] = typer.Argument(None, help="Only names containing this.")) -> None:
    """List prompts with their latest version, variables and aliases."""
    from rich.table import Table

    from llmops.registry import search_prompts

    prompts = search_prompts(pattern)
    if not prompts:
        console.print("no prompts registered yet (try `llmops prompts register`)")
        return
    table = Table("name", "latest", "type", "variables", box=None, pad_edge=False)
    for prompt in prompts:
        table.add_row(prompt.name, str(prompt.version), "chat" if prompt.is_chat else "text", ", ".join(prompt.variables) or "-")
    console.print(table)


@app.command("show")
def show(ref: str = typer.Argument(..., help="NAME, NAME@ALIAS or NAME/VERSION.")) -> None:
    """Show a prompt version: template, variables, model parameters, aliases."""
    from llmops.registry import get_prompt

    prompt = get_prompt(ref)
    print_fields(
        [
            ("ref", prompt.ref),
            ("type", "chat" if prompt.is_chat else "text"),
            ("variables", ", ".join(prompt.variables)),
            ("aliases", ", ".join(prompt.aliases)),
            ("message", prompt.commit_message),
            ("created", prompt.created.strftime("%Y-%m-%d %H:%M:%S UTC") if prompt.created else None),
            ("model_config", prompt.model_config),
        ]
    )
    console.print("[bold]template:[/bold]")
    if prompt.is_chat:
        for m in prompt.template:
            console.print(f"  [{m['role']}] {m['content']}", markup=False)
    else:
        console.print(prompt.template, markup=False)


@app.command("render")
def render(
    ref: str = typer.Argument(..., help="NAME, NAME@ALIAS or NAME/VERSION."),
    variables: list[str] = typer.Argument(None, help="KEY=VALUE for each template variable."),
) -> None:
    """Render a prompt with its variables (missing or unknown ones are errors)."""
    from llmops.registry import render_prompt

    rendered = render_prompt(ref, parse_assignments(variables or []))
    typer.echo(rendered if isinstance(rendered, str) else json.dumps(rendered, indent=2, ensure_ascii=False))


@app.command("alias")
def alias(
    name: str = typer.Argument(..., help="Prompt name."),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="Alias to move, e.g. production."),
    version: int = typer.Argument(..., help="Version the alias should point at."),
    reason: Optional[str] = typer.Option(None, help="Why; recorded in the history."),
) -> None:
    """Move a prompt alias to a version and record the move."""
    from llmops.registry import set_prompt_alias

    event = set_prompt_alias(name, alias_name, version, reason=reason)
    before = "none" if event.from_version is None else event.from_version
    console.print(f"{name}@{alias_name} -> {event.to_version} (was {before})")


@app.command("diff")
def diff(
    ref_a: str = typer.Argument(..., help="First prompt ref."),
    ref_b: str = typer.Argument(..., help="Second prompt ref."),
) -> None:
    """Show a unified diff between two prompt versions (template and model parameters)."""
    from llmops.registry import diff_prompts

    text = diff_prompts(ref_a, ref_b)
    if not text:
        console.print(f"{ref_a} and {ref_b} are identical")
        return
    for line in text.splitlines():
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else None
        console.print(line, style=style, markup=False)


@app.command("history")
def history(name: str = typer.Argument(..., help="Prompt name.")) -> None:
    """Print every alias move of a prompt, oldest first."""
    from llmops.registry import prompt_alias_history

    events = prompt_alias_history(name)
    if not events:
        console.print(f"no alias moves recorded for {name}")
    for event in events:
        console.print(event.describe(), markup=False)
