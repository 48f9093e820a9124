"""The root Typer app: global `--debug`, error handling, and the registration of every verb."""

from __future__ import annotations

import logging
import sys

import click
import typer
import typer.core

from llmops.errors import LlmopsError


class _State:
    debug = False


state = _State()


class _LlmopsGroup(typer.core.TyperGroup):
    """Turns an `LlmopsError` raised anywhere below into one line on stderr and exit code 1.

    With `--debug` the error propagates with its traceback instead.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LlmopsError as error:
            if state.debug:
                raise
            message = str(error).strip() or type(error).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(1)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.exceptions.Abort):
            raise
        except Exception as error:
            # A store failure outside llmops' own checks (MLflow's REST errors, a database that went
            # away mid-command) is one line naming the store, like every other error.
            from llmops.registry.store import store_error_message

            message = store_error_message(error)
            if message is None or state.debug:
                raise
            click.echo(f"error: {message}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


app = typer.Typer(
    cls=_LlmopsGroup,
    name="llmops",
    help="LLMOps: LoRA fine-tunes, versioned prompts, an OpenAI-compatible gateway, gated evaluation and drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    state.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register_commands() -> None:
    # Imported here, not at the top, so a command module may import `state` from this one.
    from llmops.cli import models, prompts, validate

    app.add_typer(models.app, name="models")
    app.add_typer(prompts.app, name="prompts")
    app.command("validate")(validate.validate)
    _register_optional_groups()


def _register_optional_groups() -> None:
    """Verb groups that later parts add; each module exposes `register(app)`."""
    import importlib

    for module_name in ("drift", "finetune", "serve", "evaluate", "quickstart", "monitor", "keys", "lineage"):
        try:
            module = importlib.import_module(f"llmops.cli.{module_name}")
        except ModuleNotFoundError as error:
            if error.name == f"llmops.cli.{module_name}":
                continue
            raise
        module.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmops")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
