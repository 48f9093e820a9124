"""The `llmops` command line: one Typer app, one sub-command (group) per verb.

Modules here parse arguments and print results; the work happens in the library. They import heavy
packages inside the command functions, so `llmops --help` stays fast.
"""

from llmops.cli.app import app, main

__all__ = ["app", "main"]
