"""The run directory: paths, per-stage phase state, metrics log (architecture.md)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from cropi import __version__
from cropi.config import RunConfig, dump_config
from cropi.curriculum.tensorboard import TensorBoardLog
from cropi.utils.io import atomic_write_json, atomic_write_text, read_json

PHASES = ("scored", "selected", "trained", "evaluated")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
    def write_config(self, cfg: RunConfig) -> None:
        header = f"# cropi {__version__}, git {_git_sha() or 'unknown'}\n"
        atomic_write_text(self.root / "config.yaml", header + dump_config(cfg))

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
