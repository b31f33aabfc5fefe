"""Shared CLI plumbing: option types, flags to :func:`cropi.api.make_config`, logging, error
handling. Help texts that list names take them from the registries."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

from cropi.api import make_config, parse_sets
from cropi.config import RunConfig
from cropi.curriculum.names import NAMED_FIELDS, field_names
from cropi.utils.errors import CropiError, Stopped, stop_on_signals, stop_requested
from cropi.utils.locking import held_locks, release_all, waiting

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

CLEAR = object()
"""A flag value meaning "set this key to None" (``None`` itself means "flag not given")."""

ConfigArg = Annotated[Optional[str], typer.Argument(help="YAML run config (optional; flags override it)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override any config key: --set rollout.k_pool=4 (repeatable)")]
NameOpt = Annotated[Optional[str], typer.Option(help="run name: the run directory is OUT_DIR/NAME; an existing run continues with its stored config")]
OutOpt = Annotated[Optional[str], typer.Option(help="parent folder of run directories [default: runs]")]
ModelOpt = Annotated[Optional[str], typer.Option(help="model: 'default' (embedded SmolLM2-135M-Instruct), a folder or a hub id")]
SuiteOpt = Annotated[Optional[str], typer.Option(help="built-in task suite (see `cropi suites`)")]
PoolOpt = Annotated[Optional[str], typer.Option(help="training pool: .jsonl/.parquet file, saved HF folder or hf:NAME[:CONFIG[:SPLIT]][?FIELD=COLUMN&...]; without --suite no built-in suite is used")]
TargetOpt = Annotated[Optional[list[str]], typer.Option("--target", help="target set NAME=FILE or NAME=hf:NAME:CONFIG:SPLIT (repeatable); replaces the suite's targets")]
TestOpt = Annotated[Optional[list[str]], typer.Option("--test", help="test set NAME=FILE or NAME=hf:... (repeatable); names starting with 'target' count as targeted")]
StageOpt = Annotated[int, typer.Option(help="curriculum stage (0 = scored at the initial model)")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="recompute outputs whose spec differs instead of failing")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="log at INFO level")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="when another cropi process is writing this run, wait for it to finish (saying whom) instead of stopping at once")]
def names_help(dotted: str) -> str:
    """``a, b or c``: the names a config field accepts, from its registry (for option help)."""
    names = field_names(dotted)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


ScorerOpt = Annotated[Optional[str], typer.Option(help=f"scorer: {names_help('score.scorer')} [default: paper]")]
StagesOpt = Annotated[Optional[int], typer.Option(help="number of curriculum stages [default: 2]")]
StepsOpt = Annotated[Optional[int], typer.Option(help="GRPO steps per stage [default: 20]")]
EvalEveryOpt = Annotated[Optional[int], typer.Option(help="evaluate every this many RL steps [default: 10]")]


def setup_env(verbose: bool = False) -> None:
    """Logging for a command (local models load without the hub in the library itself)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def user_errors(fn: F) -> F:
    """Print a CropiError on one line and exit 2; keep everything already written.

    Ctrl-C or SIGTERM stops the command at its next safe point (one line: where, and how to
    resume; exit 130, or 143 for SIGTERM); a second one stops it at once (every write is atomic).
    A command with a ``wait`` parameter (:data:`WaitOpt`) waits for a run another process is
    writing instead of stopping."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = held_locks()
        try:
            with stop_on_signals(_say), waiting(bool(kwargs.get("wait", False))):
                try:
                    return fn(*args, **kwargs)
                except Stopped as exc:
                    code = 143 if stop_requested() == "SIGTERM" else 130
                    err_console.print(f"stopped {exc.where}: the work done so far is kept; rerun the "
                                      "same command to resume", highlight=False, soft_wrap=True)
                    raise typer.Exit(code) from None
        except CropiError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: every file is written whole or not at all; rerun the same "
                              "command to resume", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        finally:
            release_all(keep=before)  # the command's run locks end with it, whatever happened

    return wrapper  # type: ignore[return-value]


def _say(text: str) -> None:
    """A line from a signal handler (plain stderr: it may interrupt a rich progress bar)."""
    sys.stderr.write(f"\n{text}\n")
    sys.stderr.flush()


def resolve_config(config: str | None, sets: list[str] | None = None, *, resume: bool = True,
                   **flags: Any) -> RunConfig:
    """The config of a command through :func:`cropi.api.make_config` (the one layering): the run's
    stored ``config.yaml`` when ``resume`` and the run exists, the YAML file ``config``, then the
    flags (dotted names with ``__`` for ``.``; ``None`` = not given, :data:`CLEAR` = set None),
    then ``--set key=value``."""
    given = [(dotted.replace("__", "."), None if value is CLEAR else value)
             for dotted, value in flags.items() if value is not None]
    return make_config(config, sets=given + parse_sets(sets), resume=resume)


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CropiError(f"{what} {item!r} is not NAME=FILE", fix=f"e.g. {what} gsm8k=val.jsonl")
        name, path = item.split("=", 1)
        out[name.strip()] = path.strip()
    return out


def data_flags(suite: str | None, pool: str | None, target: list[str] | None,
               test: list[str] | None) -> dict[str, Any]:
    """Data flags for :func:`resolve_config`. A pool file without ``--suite`` uses no built-in suite
    at all (no suite targets, no suite test sets)."""
    flags: dict[str, Any] = {"data.suite": suite, "data.pool": pool}
    if target:
        flags["data.targets"] = parse_pairs(target, "--target")
    if test:
        flags["data.tests"] = parse_pairs(test, "--test")
    if pool and not suite:
        flags["data.suite"] = CLEAR
    return flags


def report_config_changes(run: Any) -> None:
    """Say which fields of the run's config.yaml this command changed (earlier versions are kept)."""
    if run.config_changes:
        console.print(f"config.yaml updated ({', '.join(run.config_changes)}); earlier versions are in "
                      f"{run.dir.root / 'config.history.jsonl'}")


def config_reference() -> str:
    """Every config field with its default and help text (for `cropi config`)."""
    lines = []
    for section in dataclasses.fields(RunConfig):
        default = getattr(RunConfig(), section.name)
        if dataclasses.is_dataclass(default):
            lines.append(f"{section.name}:")
            for f in dataclasses.fields(default):
                dotted = f"{section.name}.{f.name}"
                names = f" [one of: {names_help(dotted)}]" if dotted in NAMED_FIELDS else ""
                lines.append(f"  {f.name}: {getattr(default, f.name)!r}  # {f.metadata.get('help', '')}{names}")
        else:
            lines.append(f"{section.name}: {default!r}  # {section.metadata.get('help', '')}")
    return "\n".join(lines)
