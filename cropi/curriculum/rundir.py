"""The run directory: paths, per-stage phase state, metrics log (docs/concepts.md#the-run-directory)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cropi import __version__
from cropi.config import RunConfig, dump_config, to_dict
from cropi.curriculum.tensorboard import TensorBoardLog
from cropi.utils.io import atomic_write_json, atomic_write_text, read_json

PHASES = ("scored", "selected", "trained", "evaluated")
STAGE_DIR = re.compile(r"^stage_(\d+)$")
"""Name of a stage folder under RUN/stages/: ``stage_NNN`` (group 1: the stage index)."""


def stage_folders(run_root: str | Path) -> list[tuple[int, Path]]:
    """``(index, folder)`` of every ``RUN/stages/stage_NNN`` folder, in stage order."""
    root = Path(run_root) / "stages"
    found = [(int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
             if p.is_dir() and (m := STAGE_DIR.match(p.name))]
    return sorted(found)


def selection_stages(run_root: str | Path) -> list[int]:
    """Stages of a run directory that hold a ``selection.json``, ascending."""
    return [m for m, p in stage_folders(run_root) if (p / "selection.json").is_file()]


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs between two config mappings."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("targets", "tests"):
            out.update(config_changes(a, b, f"{name}."))
        elif a != b:
            out[name] = (a, b)
    return out


class RunDir:
    def __init__(self, root: str | Path, rollouts_root: str | Path | None = None,
                 tensorboard: bool = False) -> None:
        self.root = Path(root)
        self.rollouts_root = Path(rollouts_root) if rollouts_root else self.root / "rollouts"
        self.tensorboard = TensorBoardLog(self.root / "tensorboard") if tensorboard else None

    # --- layout -------------------------------------------------------------------------
    def rollouts(self, name: str) -> Path:
        """``pool`` or ``targets/<name>`` (shared between the arms of a comparison)."""
        return self.rollouts_root / name

    def stage(self, m: int) -> Path:
        return self.root / "stages" / f"stage_{m:03d}"

    def features(self, m: int, name: str) -> Path:
        return self.stage(m) / "features" / name

    def scores(self, m: int) -> Path:
        return self.stage(m) / "scores.parquet"

    def selection(self, m: int) -> Path:
        return self.stage(m) / "selection.json"

    def checkpoint(self, m: int) -> Path:
        return self.stage(m) / "checkpoint"

    def evaluation(self, m: int) -> Path:
        return self.stage(m) / "eval.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    # --- state --------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def write_config(self, cfg: RunConfig) -> list[str]:
        """Record ``cfg`` as the run's config. Returns the changed keys (``section.key``).

        A new run gets config.yaml. On an existing run nothing is written when the config is the
        same; a different one replaces config.yaml only after its predecessor and the changes
        were appended to config.history.jsonl, so how the run was made is never lost.
        """
        new = to_dict(cfg)
        if self.config_path.is_file():
            old = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
            changes = config_changes(old, new)
            if not changes:
                return []
            rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:],
                   "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}, "previous": old}
            with (self.root / "config.history.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, default=str) + "\n")
        else:
            changes = {}
        header = f"# cropi {__version__}, git {_git_sha() or 'unknown'}\n"
        atomic_write_text(self.config_path, header + dump_config(cfg))
        return list(changes)

    def state(self, m: int) -> dict[str, Any]:
        path = self.stage(m) / "state.json"
        return read_json(path) if path.exists() else {}

    def done(self, m: int, phase: str) -> bool:
        return bool(self.state(m).get(phase))

    def mark(self, m: int, phase: str, **info: Any) -> None:
        state = self.state(m)
        state[phase] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        atomic_write_json(self.stage(m) / "state.json", state)

    def clear(self, m: int, *phases: str) -> None:
        state = self.state(m)
        for p in phases:
            state.pop(p, None)
        atomic_write_json(self.stage(m) / "state.json", state)

    def log_metrics(self, event: str, **values: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        rec = {"event": event, "time": time.time(), **values}
        with (self.root / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.log(event, values)
