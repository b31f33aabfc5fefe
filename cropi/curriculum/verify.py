"""`cropi verify`: check a run's stores against their done records, read-only, and say what a
rerun would compute again (docs/reliability.md#failures-and-recovery).

What is checked, per run directory (a comparison: its ``compare.json``, its own draw and every run
under ``draws/`` and ``arms/``):

- ``config.yaml`` parses; ``metrics.jsonl`` lines that are not JSON are counted (readers skip them);
- beta's rollouts: a complete set's ``rollouts.parquet`` against the size and SHA-256 in its
  manifest, and that it reads; an unfinished set's parts against their done records;
- every stage's ``state.json``; each done phase's outputs against the record it keeps
  (``scores.parquet``, ``selection.json``, the checkpoint's files) and that they read;
- every feature store: its JSON files, the arrays' shapes against the file sizes, and every done
  row against its CRC-32;
- the per-item evaluation tables (``evals/*.parquet``) read;
- stale lock files and temporaries left by a killed writer (removed by the next one).

Nothing is written: the checks take no lock, so a run being written can show work in progress.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cropi.curriculum.rundir import LOCK_FILE, PHASE_FILES, STALE, RunDir, stage_folders
from cropi.influence.features import FeatureStore
from cropi.influence.store_format import DTYPES
from cropi.rollout import store as rollout_store
from cropi.utils.errors import CropiError
from cropi.utils.io import read_json
from cropi.utils.locking import describe_owner, is_held, lock_owner

OK, RECOMPUTE, DAMAGED, NOTE = "ok", "recompute", "damaged", "note"
"""A finding's kind: fine; damaged or unfinished, and a rerun computes it again (``action`` says
what); damaged with no automatic recovery (``action``: what to do); worth knowing only."""


@dataclass
class Finding:
    path: Path
    kind: str
    detail: str
    action: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "detail": self.detail, "action": self.action}


@dataclass
class RunCheck:
    """The findings of :func:`verify_run`; ``problems``: the ones a rerun would recompute or that
    need a hand."""

    root: Path
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.kind in (RECOMPUTE, DAMAGED)]

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: Path, kind: str, detail: str, action: str | None = None) -> None:
        self.findings.append(Finding(path, kind, detail, action))

    def as_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "ok": self.ok, "findings": [f.as_dict() for f in self.findings]}


def _why(exc: BaseException) -> str:
    """An error's own words: without the file it names (the finding does) and its fix (the
    finding's action says what a rerun does)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, CropiError):
        if exc.fix:
            text = text.removesuffix(f" ({' '.join(exc.fix.split())})")
        if exc.file is not None:
            text = text.removeprefix(f"{exc.file}: ")
    return text


def verify_run(run_dir: str | Path) -> RunCheck:
    """Check the stores of a run (or comparison) directory; nothing is written."""
    root = Path(run_dir)
    if not root.is_dir():
        raise CropiError("is not a directory", file=root, fix="give a run directory (OUT_DIR/NAME)")
    check = RunCheck(root)
    roots = [root] + sorted(p for p in root.glob("draws/seed_*") if p.is_dir()) \
        + sorted(p for p in root.glob("arms/*/seed_*") if p.is_dir())
    if not any((r / "config.yaml").exists() or (r / "rollouts").exists() or (r / "stages").exists() for r in roots):
        raise CropiError("holds no cropi run (no config.yaml, rollouts or stages)", file=root,
                         fix="give a run directory (OUT_DIR/NAME)")
    for r in roots:
        _check_run(r, check)
    return check


def _check_run(root: Path, check: RunCheck) -> None:
    if (root / "compare.json").exists():
        try:
            read_json(root / "compare.json")
            check.add(root / "compare.json", OK, "reads")
        except ValueError as exc:
            check.add(root / "compare.json", DAMAGED, _why(exc),
                      "delete it: the next `cropi compare` writes it again from its --arms and --seeds")
    _check_config(root, check)
    _check_metrics(root / "metrics.jsonl", check)
    _check_locks(root, check)
    rollouts = root / "rollouts"
    for folder in [rollouts / "pool", *sorted((rollouts / "targets").glob("*"))]:
        if folder.is_dir():
            _check_rollouts(folder, check)
    run = RunDir(root)
    for m, folder in stage_folders(root):
        _check_stage(run, m, folder, check)
    for path in sorted((root / "evals").glob("*.parquet")):
        _check_parquet(path, check, "an evaluation's per-item table", "cannot be recomputed alone: "
                       "delete it (the eval event in metrics.jsonl keeps the accuracies)")


def _check_config(root: Path, check: RunCheck) -> None:
    path = root / "config.yaml"
    if not path.exists():
        return
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        check.add(path, DAMAGED, f"cannot be read ({' '.join(str(exc).split())[:120]})",
                  "restore it from config.history.jsonl's last 'previous', or rerun with the same flags")
    else:
        check.add(path, OK, "reads")


def _check_metrics(path: Path, check: RunCheck) -> None:
    if not path.exists():
        return
    bad = 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                bad += 1
    if bad:
        check.add(path, NOTE, f"{bad} line(s) are not JSON (a write cut short); readers skip them")
    else:
        check.add(path, OK, "every line is JSON")


def _check_locks(root: Path, check: RunCheck) -> None:
    for lock in [root / LOCK_FILE, root / f".rollouts{LOCK_FILE}"]:
        if not lock.exists():
            continue
        if is_held(lock):
            check.add(lock, NOTE, f"in use by {describe_owner(lock_owner(lock))}: what it writes shows as "
                                  "work in progress")
        else:
            check.add(lock, NOTE, f"left by {describe_owner(lock_owner(lock))}, which no longer runs; the "
                                  "next writer takes it over")
    found = sorted({p for pattern in STALE for sub in ("", "stages", "evals", "rollouts")
                    for p in ((root / sub).glob(pattern) if not sub else (root / sub).rglob(pattern))})
    for path in found:
        check.add(path, NOTE, "a temporary left by an interrupted writer; the next writer removes it")


def _check_rollouts(folder: Path, check: RunCheck) -> None:
    name = f"{folder.parent.name}/{folder.name}" if folder.parent.name == "targets" else folder.name
    if (folder / "manifest.json").exists():
        why = rollout_store.merged_problem(folder)
        if why is None:
            try:
                rows = pq.read_metadata(folder / "rollouts.parquet").num_rows
            except (OSError, ValueError, pa.ArrowException) as exc:
                why = f"rollouts.parquet cannot be read ({' '.join(str(exc).split())[:100]})"
        if why is not None:
            check.add(folder / "rollouts.parquet", RECOMPUTE, why.removeprefix("rollouts.parquet: "),
                      f"a command that samples (cropi rollout, score, run) samples {name} again, same seeds")
        else:
            check.add(folder, OK, f"{rows} prompts, matches its manifest")
        return
    parts = sorted((folder / "parts").glob("part-*.parquet"))
    bad = [(p, rollout_store.part_problem(p)) for p in parts]
    bad = [(p, why) for p, why in bad if why is not None]
    for part, why in bad:
        check.add(part, RECOMPUTE, why, "a command that samples samples this chunk again")
    check.add(folder, RECOMPUTE if parts or (folder / "spec.json").exists() else NOTE,
              f"unfinished: {len(parts) - len(bad)} chunk(s) sampled and intact",
              "a command that samples resumes it")


def _check_stage(run: RunDir, m: int, folder: Path, check: RunCheck) -> None:
    try:
        state = run.state(m)
    except CropiError as exc:
        check.add(folder / "state.json", DAMAGED, _why(exc),
                  f"delete it and rerun: stage {m}'s phases are computed again")
        state = {}
    for phase in PHASE_FILES:
        if not state.get(phase):
            continue
        bad = run.output_mismatch(m, phase, state=state)
        for rel, why in bad.items():
            if phase == "selected":
                check.add(folder / rel, NOTE, f"{why} (edited after the selection?)",
                          "kept as it is; `cropi select --overwrite` makes the selection again")
            else:
                action = {"scored": f"`cropi score` (or run) scores stage {m} again from its features",
                          "trained": f"`cropi run` trains stage {m} again"}[phase]
                check.add(folder / rel, RECOMPUTE, why, action)
        if not bad and isinstance(state[phase], dict) and state[phase].get("files"):
            check.add(folder / PHASE_FILES[phase], OK, f"{phase}: matches its done record")
    if (folder / "scores.parquet").exists():
        _check_parquet(folder / "scores.parquet", check, "the score table",
                       f"`cropi score` scores stage {m} again from its features")
    if (folder / "selection.json").exists():
        from cropi.select import read_selection

        try:
            read_selection(folder / "selection.json")
        except CropiError as exc:
            check.add(folder / "selection.json", DAMAGED, _why(exc),
                      f"delete it and rerun `cropi select` (or run): stage {m} is selected again")
    for spec in sorted(folder.glob("features/**/spec.json")):
        _check_features(spec.parent, m, check)


def _check_parquet(path: Path, check: RunCheck, what: str, action: str) -> None:
    try:
        pq.read_metadata(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        check.add(path, RECOMPUTE, f"{what} cannot be read ({' '.join(str(exc).split())[:100]})", action)


def _check_features(path: Path, m: int, check: RunCheck) -> None:
    action = f"`cropi score` (or run) computes the damaged rows of stage {m} again"
    try:
        meta = read_json(path / "spec.json")
        ids = read_json(path / "ids.json")
        complete = (path / "manifest.json").exists()
        if complete:
            read_json(path / "manifest.json")
        dtype = meta["dtype"]
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}")
        store = FeatureStore(path, ids, int(meta["k"]), dtype, meta["spec"], readonly=True)
    except (CropiError, OSError, ValueError, KeyError, TypeError) as exc:
        check.add(path, RECOMPUTE, _why(exc),
                  f"delete the folder and rerun `cropi score`: stage {m}'s store is computed again")
        return
    try:
        bad = store.damaged_rows()
    except CropiError as exc:
        check.add(path / "features.npy", RECOMPUTE, _why(exc), action)
        return
    done = store.n_done()
    if bad.size:
        ids_bad = [store.ids[i] for i in bad[:3]]
        check.add(path / "features.npy", RECOMPUTE,
                  f"{bad.size} of {store.n} rows do not match their checksums (e.g. {ids_bad})", action)
    elif store._check is None:
        check.add(path, NOTE, f"{done} rows, no checksums (written before cropi kept them): rows not checked; "
                              "the next scoring of the stage adds them")
    if not complete:
        check.add(path, RECOMPUTE, f"unfinished: {done} of {store.n} rows written",
                  f"`cropi score` (or run) computes the other {store.n - done}")
    elif not bad.size:
        zero = int(np.count_nonzero(store.zero))
        check.add(path, OK, f"{store.n} rows ({zero} zero-gradient), every row matches its checksum"
                  if store._check is not None else f"{store.n} rows")
    store.close()
