"""`llmops keys`: make gateway API keys (the config stores only their SHA-256)."""

from __future__ import annotations

from typing import Optional

import typer

__all__ = ["app", "register"]

app = typer.Typer(help="Gateway API keys: the config holds their SHA-256 hashes, never the keys.",
                  no_args_is_help=True)


@app.command("hash")
def hash_command(
    key: Optional[str] = typer.Option(None, "--key", help="Hash this existing key instead of making a new one "
                                      "(it then shows in your shell history; prefer --stdin)."),
    stdin: bool = typer.Option(False, "--stdin", help="Read the key to hash from standard input."),
    key_id: str = typer.Option("my-key", "--id", help="The `id` to put in the printed config entry."),
) -> None:
    """Print a new random API key and the `auth.keys` entry (its SHA-256) for the gateway config."""
    import sys

    from llmops.gateway.auth import hash_key, new_key

    fresh = key is None and not stdin
    if stdin:
        key = sys.stdin.readline().strip()
        if not key:
            raise typer.BadParameter("no key on standard input", param_hint="--stdin")
    secret = new_key() if fresh else key
    digest = hash_key(secret)
    if fresh:
        typer.echo(f"key:    {secret}    (give it to the client; it is not stored anywhere)")
    typer.echo(f"sha256: {digest}")
    typer.echo("config entry (serving/gateway.yaml, under auth.keys):")
    typer.echo(f'  - {{id: {key_id}, sha256: {digest}, models: ["*"]}}')


def register(root_app: typer.Typer) -> None:
    """Add `keys` to the root CLI."""
    root_app.add_typer(app, name="keys")
