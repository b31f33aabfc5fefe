"""The ``cropi`` command line. Every command on a run takes the run's stored ``config.yaml`` as its
base (when the run exists), then an optional YAML config, then flags, then ``--set
section.key=value`` overrides (see ``cropi config`` for every key)."""

from __future__ import annotations

from cropi.cli import commands_tools, commands_pipeline, demo  # noqa: F401, I001  (registration order = --help order)
from cropi.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
