"""The run directory: paths, per-stage phase state, metrics log (docs/concepts.md#the-run-directory).

One writer at a time (docs/reliability.md): the first write through a :class:`RunDir` (a phase
marked, a metrics event, the config) takes the run's lock ``RUN/.cropi.lock``
(:func:`cropi.utils.locking.hold`), kept until :meth:`RunDir.release` or the end of the process;
another process that holds it makes this one stop with one line naming it (or wait, under
:func:`cropi.utils.locking.waiting`). Taking it removes the temporaries a killed writer left.

A phase's done record in ``state.json`` keeps the size and SHA-256 of its outputs
(:data:`PHASE_FILES`); :meth:`RunDir.done` says False, with a warning, when a score table (or a
checkpoint's file sizes) no longer matches, so the phase is computed again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import yaml

from cropi import __version__
from cropi.config import RunConfig, dump_config, to_dict
from cropi.curriculum.tensorboard import TensorBoardLog
from cropi.utils.errors import check_stop
from cropi.utils.io import (append_line, atomic_write_json, atomic_write_text, file_record, read_json,
                            record_mismatch)
from cropi.utils.locking import Lease, hold

log = logging.getLogger(__name__)

PHASES = ("scored", "selected", "trained", "evaluated")
LOCK_FILE = ".cropi.lock"
"""The writer lock of a run directory (and of a rollouts folder shared between runs)."""
PHASE_FILES = {"scored": "scores.parquet", "selected": "selection.json", "trained": "checkpoint"}
"""The output (in the stage folder) whose size and SHA-256 a phase's done record keeps; a folder's
files are recorded one by one. A missing checkpoint is not damage: later stages delete it."""
CHECKED = {"scored": True, "trained": False}
"""Phases whose done record :meth:`RunDir.done` checks (True: size and SHA-256; False: sizes).
``selection.json`` is a file people edit on purpose: only ``cropi verify`` reports a difference."""
STALE = (".tmp-*", ".old-*", "*.linking")
"""Names of the temporaries a killed writer can leave in a run's folders."""
_CLEANED: set[tuple[int, str]] = set()
_WORK = {"scored": "scoring", "selected": "selection", "trained": "training", "evaluated": "evaluation",
         "evaluated_beta": "evaluation of beta"}
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


def remove_stale(folder: Path, recursive: bool = True) -> int:
    """Remove the temporaries (:data:`STALE`) under ``folder``; call it holding the folder's lock.
    Returns how many were removed."""
    if not folder.is_dir():
        return 0
    found = {p for pattern in STALE for p in (folder.rglob(pattern) if recursive else folder.glob(pattern))}
    n = 0
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():
            continue  # inside a folder removed just before
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        n += 1
    return n


class RunDir:
    def __init__(self, root: str | Path, rollouts_root: str | Path | None = None,
                 tensorboard: bool = False) -> None:
        self.root = Path(root)
        self.rollouts_root = Path(rollouts_root) if rollouts_root else self.root / "rollouts"
        self.tensorboard = TensorBoardLog(self.root / "tensorboard") if tensorboard else None
        self._lease: Lease | None = None

    # --- the writer lock ----------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def acquire(self) -> None:
        """Take the run's writer lock (once per RunDir; this process may hold it already). Refuses
        with :class:`cropi.utils.locking.LockHeld` when another process holds it, unless waiting
        was asked for. The first time this process takes it, stale temporaries are removed."""
        if self._lease is not None and not self._lease.released:
            return
        lease = hold(self.lock_path, what=f"run {self.root}")
        self._lease = lease
        weakref.finalize(self, lease.release)
        key = (os.getpid(), str(self.lock_path.absolute()))
        if key not in _CLEANED:
            _CLEANED.add(key)
            n = remove_stale(self.root, recursive=False) + remove_stale(self.root / "stages") \
                + remove_stale(self.root / "evals")
            if n:
                log.warning("removed %d temporary files left in %s by an interrupted writer", n, self.root)

    def release(self) -> None:
        """Drop this RunDir's hold on the run's lock (the lock is released when no RunDir of this
        process holds it any more)."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

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
                return []  # nothing to write: no lock needed (a command that only read)
            self.acquire()
            old = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}  # as of the lock
            changes = config_changes(old, new)
            if not changes:
                return []
            rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:],
                   "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}, "previous": old}
            append_line(self.root / "config.history.jsonl", json.dumps(rec, default=str))
        else:
            self.acquire()
            changes = {}
        header = f"# cropi {__version__}, git {_git_sha() or 'unknown'}\n"
        atomic_write_text(self.config_path, header + dump_config(cfg))
        return list(changes)

    def state(self, m: int) -> dict[str, Any]:
        path = self.stage(m) / "state.json"
        if not path.exists():
            return {}
        state = read_json(path, fix=f"delete it and rerun: stage {m}'s phases are computed again "
                                    "(`cropi verify` lists what else would be)")
        if not isinstance(state, dict):
            from cropi.utils.io import damaged

            raise damaged(path, "not a JSON object", fix=f"delete it and rerun: stage {m}'s phases are "
                                                         "computed again")
        return state

    def output_mismatch(self, m: int, phase: str, *, hash_check: bool = True,
                        state: dict[str, Any] | None = None) -> dict[str, str]:
        """``{file: how it differs}`` for the outputs of a done phase that no longer match its
        record (``{}`` when they match, or when the phase keeps no record)."""
        rec = (state if state is not None else self.state(m)).get(phase)
        files = rec.get("files") if isinstance(rec, dict) else None
        if not files:
            return {}
        if phase == "trained" and not (self.stage(m) / PHASE_FILES["trained"]).exists():
            return {}  # removed on purpose once the next stage trained
        out = {}
        for rel, frec in sorted(files.items()):
            path = self.stage(m) / rel
            why = record_mismatch(path, frec, hash_check=hash_check)
            if why is not None:
                out[rel] = why
        return out

    def done(self, m: int, phase: str) -> bool:
        """Whether ``phase`` of stage ``m`` is done and its outputs still match their record
        (:data:`CHECKED`). A phase's start: a requested stop ends the work here."""
        check_stop(f"before stage {m}'s {_WORK.get(phase, phase)}")
        state = self.state(m)
        if not state.get(phase):
            return False
        if phase not in CHECKED:
            return True
        bad = self.output_mismatch(m, phase, hash_check=CHECKED[phase], state=state)
        if bad:
            what = "; ".join(f"{self.stage(m) / f}: {why}" for f, why in bad.items())
            log.warning("stage %d %s: %s (damaged or changed since); computing the phase again", m, phase, what)
            return False
        return True

    def phase_files(self, m: int, phase: str) -> dict[str, dict[str, Any]]:
        """``{file relative to the stage folder: file_record}`` of a phase's outputs (none when it
        has no :data:`PHASE_FILES` entry or they do not exist)."""
        name = PHASE_FILES.get(phase)
        if name is None:
            return {}
        path = self.stage(m) / name
        if path.is_file():
            return {name: file_record(path)}
        if path.is_dir():
            return {str(p.relative_to(self.stage(m))): file_record(p)
                    for p in sorted(path.rglob("*")) if p.is_file()}
        return {}

    def mark(self, m: int, phase: str, **info: Any) -> None:
        self.acquire()
        state = self.state(m)
        files = self.phase_files(m, phase)
        state[phase] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info, **({"files": files} if files else {})}
        atomic_write_json(self.stage(m) / "state.json", state)

    def refresh_record(self, m: int, phase: str) -> None:
        """Record a done phase's outputs again after they were rewritten on purpose (a rescore)."""
        state = self.state(m)
        if isinstance(state.get(phase), dict):
            self.acquire()
            state[phase]["files"] = self.phase_files(m, phase)
            atomic_write_json(self.stage(m) / "state.json", state)

    def clear(self, m: int, *phases: str) -> None:
        self.acquire()
        state = self.state(m)
        for p in phases:
            state.pop(p, None)
        atomic_write_json(self.stage(m) / "state.json", state)

    def log_metrics(self, event: str, **values: Any) -> None:
        self.acquire()
        rec = {"event": event, "time": time.time(), **values}
        append_line(self.root / "metrics.jsonl", json.dumps(rec, default=str))
        if self.tensorboard is not None:
            self.tensorboard.log(event, values)
