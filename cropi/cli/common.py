"""Shared CLI plumbing: option types, config assembly (stored run config < YAML < flags <
``--set``), logging, error handling."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
import yaml
from rich.console import Console

from cropi.api import load_backends, merge_sections, set_dotted
from cropi.config import RunConfig, from_dict, load_config, read_config_data, to_dict
from cropi.utils.errors import CropiError

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
ScorerOpt = Annotated[Optional[str], typer.Option(help="scorer: paper, differential, centred, unitmean, knn, eb or source [default: paper]")]
StagesOpt = Annotated[Optional[int], typer.Option(help="number of curriculum stages [default: 2]")]
StepsOpt = Annotated[Optional[int], typer.Option(help="GRPO steps per stage [default: 20]")]
EvalEveryOpt = Annotated[Optional[int], typer.Option(help="evaluate every this many RL steps [default: 10]")]


def setup_env(verbose: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
    """Print a CropiError on one line and exit 2; keep everything already written."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CropiError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _parse_sets(sets: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in sets or []:
        if "=" not in item:
            raise CropiError(f"--set {item!r} is not KEY=VALUE", fix="e.g. --set rollout.k_pool=4")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def stored_config_path(config: str | None, sets: list[tuple[str, Any]], flags: dict[str, Any]) -> Path:
    """Where the run these arguments name keeps its config: OUT_DIR/NAME/config.yaml."""
    defaults = RunConfig()
    user = read_config_data(config) if config else {}
    given = {"name": user.get("name", defaults.name), "out_dir": user.get("out_dir", defaults.out_dir)}
    for key in given:
        if flags.get(key) is not None:
            given[key] = flags[key]
    for key, value in sets:
        if key in given:
            given[key] = value
    return Path(str(given["out_dir"])) / str(given["name"]) / "config.yaml"


def build_config(config: str | None, sets: list[str] | None = None, *, from_run: bool = True,
                 **flags: Any) -> RunConfig:
    """The resolved config of a command, lowest to highest precedence:

    1. the run's stored ``config.yaml`` when ``from_run`` and OUT_DIR/NAME already holds a run,
       else the defaults;
    2. the keys the YAML file ``config`` names;
    3. flags (dotted names with ``__`` for ``.``; ``None`` = not given, :data:`CLEAR` = set None);
    4. ``--set key=value``.
    """
    parsed_sets = _parse_sets(sets)
    if config:
        load_config(config)  # validates the file on its own, with its path in any error
    stored = stored_config_path(config, parsed_sets, flags) if from_run else None
    data = to_dict(load_config(stored)) if stored is not None and stored.is_file() else to_dict(RunConfig())
    if config:
        data = merge_sections(data, read_config_data(config))
    for dotted, value in flags.items():
        if value is not None:
            set_dotted(data, dotted.replace("__", "."), None if value is CLEAR else value)
    for key, value in parsed_sets:
        set_dotted(data, key, value)
    cfg = from_dict(RunConfig, data)
    load_backends(cfg)
    return cfg


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
    """Data flags for :func:`build_config`. A pool file without ``--suite`` uses no built-in suite
    at all (no suite targets, no suite test sets)."""
    flags: dict[str, Any] = {"data.suite": suite, "data.pool": pool}
    if target:
        flags["data.targets"] = parse_pairs(target, "--target")
    if test:
        flags["data.tests"] = parse_pairs(test, "--test")
    if pool and not suite:
        flags["data.suite"] = CLEAR
    return flags


def open_run(cfg: RunConfig, overwrite: bool = False) -> Any:
    from cropi.curriculum.phases import Run

    return Run(cfg, overwrite=overwrite)


def finish_run(run: Any) -> None:
    """Record the config this command ran with (config.yaml + config.history.jsonl on a change)."""
    changes = run.save_config()
    if changes:
        console.print(f"config.yaml updated ({', '.join(changes)}); earlier versions are in "
                      f"{run.dir.root / 'config.history.jsonl'}")


def config_reference() -> str:
    """Every config field with its default and help text (for `cropi config`)."""
    lines = []
    for section in dataclasses.fields(RunConfig):
        default = getattr(RunConfig(), section.name)
        if dataclasses.is_dataclass(default):
            lines.append(f"{section.name}:")
            for f in dataclasses.fields(default):
                lines.append(f"  {f.name}: {getattr(default, f.name)!r}  # {f.metadata.get('help', '')}")
        else:
            lines.append(f"{section.name}: {default!r}  # {section.metadata.get('help', '')}")
    return "\n".join(lines)
