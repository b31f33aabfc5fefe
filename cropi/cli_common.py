"""Shared CLI plumbing: config assembly from YAML + flags + ``--set``, logging, error handling."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
import yaml
from rich.console import Console

from cropi.config import RunConfig, from_dict, load_config, to_dict
from cropi.utils.errors import CropiError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


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


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise CropiError(f"{dotted!r} does not name a config field", field=dotted)
    cur[keys[-1]] = value


def build_config(config: str | None, sets: list[str] | None = None, **flags: Any) -> RunConfig:
    """YAML file (optional) < flags (dotted names, None = not given) < ``--set key=value``."""
    data = to_dict(load_config(config)) if config else to_dict(RunConfig())
    for dotted, value in flags.items():
        if value is not None:
            _set_path(data, dotted.replace("__", "."), value)
    for item in sets or []:
        if "=" not in item:
            raise CropiError(f"--set {item!r} is not KEY=VALUE", fix="e.g. --set rollout.k_pool=4")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    cfg = from_dict(RunConfig, data)
    load_backends(cfg)
    return cfg


def load_backends(cfg: RunConfig) -> None:
    """Import the optional engines ``cfg`` names; each registers itself with the layer it serves."""
    if cfg.rollout.backend == "vllm":
        import cropi.scale.vllm  # noqa: F401
    if cfg.score.backend == "ray":
        import cropi.scale.ray_score  # noqa: F401


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CropiError(f"{what} {item!r} is not NAME=FILE", fix=f"e.g. {what} gsm8k=val.jsonl")
        name, path = item.split("=", 1)
        out[name.strip()] = path.strip()
    return out


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

