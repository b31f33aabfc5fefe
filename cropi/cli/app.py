"""The typer application every ``cropi`` command registers on."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="CROPI: curriculum RL with off-policy influence guidance for RLVR.")
