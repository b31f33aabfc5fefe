"""Reading what a report needs from run directories and comparison directories.

A run directory (docs/concepts.md#the-run-directory): ``metrics.jsonl`` (events ``eval``, ``train_log``,
``rollouts``, ``score``, ``train``, ``eval_time``), ``stages/stage_NNN/selection.json`` (+
optional ``scores.parquet``) and, when the evaluation stored them, per-item results
``evals/step_NNNNNN.parquet`` (:func:`read_item_results`). A comparison directory:
``compare.json``, its own ``metrics.jsonl`` (the shared rollouts) and ``arms/<arm>/seed_<s>/`` run
directories.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cropi.curriculum.rundir import stage_folders
from cropi.influence.scores import read_scores, target_scores
from cropi.report.acceleration import Curve
from cropi.select import fuse, read_selection
from cropi.utils.errors import CropiError
from cropi.utils.io import read_json, read_jsonl

log = logging.getLogger(__name__)

# report category -> (metrics.jsonl event, key holding its seconds). The categories do not
# overlap: a ``train`` event's seconds exclude the evaluations run during training (logged as
# ``eval_time`` events, summed in the train event's ``eval_seconds``).
TIME_EVENTS: dict[str, tuple[str, str]] = {
    "rollouts": ("rollouts", "seconds"),
    "scoring": ("score", "total_s"),
    "training": ("train", "seconds"),
    "evaluation": ("eval_time", "seconds"),
}
SCORE_BINS = 20
ITEMS_DIR = "evals"
ITEM_COLUMNS = ("set", "id", "mode", "reward")
"""Per-item results, one Parquet file per evaluation: ``RUN/evals/step_NNNNNN.parquet`` with one row
per (test set, item, mode): ``set`` (test set name, e.g. ``targeted/chain``), ``id``, ``mode``
(``greedy`` or ``mean@k``), ``reward`` (0/1 greedy, the mean over the k samples for mean@k) and,
optionally, ``strict`` (share of the item's completions whose final answer has the strict form) and
``answer`` (the extracted answer of the first completion)."""
_ITEM_RE = re.compile(r"^step_(\d+)\.parquet$")
_SEED_RE = re.compile(r"^seed_(-?\d+)$")


@dataclass
class StageData:
    """One ``stages/stage_NNN`` folder: its selection (None when absent or unreadable)."""

    index: int
    path: Path
    selection: dict[str, Any] | None
    scores_path: Path | None


@dataclass
class RunData:
    """One run directory: its arm, seed, metrics records and stages."""

    path: Path
    arm: str
    seed: int | None
    records: list[dict[str, Any]]
    stages: list[StageData] = field(default_factory=list)

    def curve(self, key: str) -> Curve:
        """``eval`` curve of ``key`` ("targeted" / "untargeted"); see :func:`eval_curve`."""
        return eval_curve(self.records, key)

    @property
    def policy(self) -> str | None:
        """The selection policy of the run's first stage (None: no selection.json)."""
        for stage in self.stages:
            if stage.selection is not None:
                return str(stage.selection.get("policy"))
        return None

    def metric(self) -> str | None:
        """The accuracy metric of the run's ``eval`` events (``greedy`` / ``mean@k``)."""
        for rec in reversed(self.records):
            if rec.get("event") == "eval" and isinstance(rec.get("metric"), str):
                return rec["metric"]
        return None

    def item_rewards(self, targeted: bool = True) -> dict[int, dict[tuple[str, str], float]]:
        """step -> {(set, id): reward} of the per-item results for the run's metric, for the
        targeted (or untargeted) test sets; ``{}`` without per-item results."""
        metric = self.metric()
        out: dict[int, dict[tuple[str, str], float]] = {}
        for step, rows in read_item_results(self.path).items():
            keep = {(str(s), str(i)): float(r) for s, i, m, r in
                    zip(rows["set"], rows["id"], rows["mode"], rows["reward"], strict=True)
                    if (metric is None or m == metric) and str(s).startswith("target") == targeted}
            if keep:
                out[step] = keep
        return out


@dataclass
class Comparison:
    """Arms (in order) -> their runs (by seed); ``baseline`` arm name or None."""

    path: Path
    arms: dict[str, list[RunData]]
    baseline: str | None
    meta: dict[str, Any]
    single_run: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)  # the comparison's own metrics
    seed_records: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # each seed's own draw


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (``[]`` when missing); unreadable lines are skipped, logged."""
    if not Path(path).exists():
        log.warning("%s does not exist: no metrics to report", path)
    return read_jsonl(path)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def eval_curve(records: list[dict[str, Any]], key: str) -> Curve:
    """(steps, values) of ``eval`` events with a finite ``key``, sorted by step.

    When a step was evaluated twice (a resumed run) the later record wins.
    """
    by_step: dict[int, float] = {}
    for rec in records:
        if rec.get("event") != "eval":
            continue
        step, value = _number(rec.get("step")), _number(rec.get(key))
        if step is None or value is None:
            continue
        by_step[int(step)] = value
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[int(s)] for s in steps], dtype=np.float64)


def _stage_label(stage: Any) -> str:
    if stage is None:
        return "setup"
    return "beta" if stage == -1 else f"stage {stage}"


def time_breakdown(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seconds per stage label ("setup", "beta", "stage 0", ...) and category (:data:`TIME_EVENTS`).

    Events without a ``stage`` (rollouts) go to "setup"; labels are in stage order. The categories
    add up to the time spent: training excludes evaluation. A ``train`` event written before
    training was timed apart (no ``eval_seconds`` key: its seconds include the stage's
    evaluations) has the stage's ``eval_time`` seconds taken out.
    """
    per: dict[Any, dict[str, float]] = {}
    legacy: set[Any] = set()  # stages whose train seconds include their evaluations
    for rec in records:
        stage = rec.get("stage")
        stage = int(stage) if _number(stage) is not None else None
        for category, (event, key) in TIME_EVENTS.items():
            seconds = _number(rec.get(key)) if rec.get("event") == event else None
            if seconds is None:
                continue
            slot = per.setdefault(stage, dict.fromkeys(TIME_EVENTS, 0.0))
            slot[category] += seconds
            if event == "train" and "eval_seconds" not in rec:
                legacy.add(stage)
    for stage in legacy:
        slot = per[stage]
        slot["training"] = max(0.0, slot["training"] - slot["evaluation"])
    order = sorted(per, key=lambda s: -math.inf if s is None else s)
    return {_stage_label(s): per[s] for s in order}


def read_stages(run: Path) -> list[StageData]:
    """The ``stages/stage_NNN`` folders of a run, in stage order."""
    found = []
    for index, path in stage_folders(run):
        selection = None
        if (path / "selection.json").exists():
            try:
                selection = read_selection(path / "selection.json")
            except CropiError as exc:
                log.warning("skipping an unreadable selection: %s", exc)
        scores = path / "scores.parquet"
        found.append(StageData(index, path, selection, scores if scores.exists() else None))
    return found


def load_run(path: str | Path, arm: str | None = None, seed: int | None = None) -> RunData:
    """Read one run directory; ``seed`` defaults to the ``seed_<s>`` folder name, if any."""
    path = Path(path)
    if seed is None and (match := _SEED_RE.match(path.name)):
        seed = int(match.group(1))
    return RunData(path=path, arm=arm or path.resolve().name, seed=seed,
                   records=read_metrics(path / "metrics.jsonl"), stages=read_stages(path))


def _seed_dirs(arm_dir: Path) -> list[tuple[int, Path]]:
    seeds = [(int(m.group(1)), p) for p in arm_dir.iterdir()
             if p.is_dir() and (m := _SEED_RE.match(p.name))]
    return sorted(seeds)


def load_comparison(path: str | Path) -> Comparison:
    """Read ``compare.json`` and every ``arms/<arm>/seed_<s>`` run (arms in compare.json order)."""
    path = Path(path)
    meta = read_json(path / "compare.json")
    if not isinstance(meta, dict):
        raise CropiError("is not a comparison file (expected a JSON object)",
                         file=path / "compare.json")
    arms_dir = path / "arms"
    listed = [str(a) for a in meta.get("arms", [])]
    present = sorted(p.name for p in arms_dir.iterdir() if p.is_dir()) if arms_dir.is_dir() else []
    arms: dict[str, list[RunData]] = {}
    for arm in listed + [a for a in present if a not in listed]:
        runs = [load_run(p, arm, s) for s, p in _seed_dirs(arms_dir / arm)] \
            if (arms_dir / arm).is_dir() else []
        if runs:
            arms[arm] = runs
        else:
            log.warning("arm %s has no seed_<s> run directory under %s", arm, arms_dir)
    baseline = str(meta.get("baseline", "full"))
    if baseline not in arms:
        log.warning("baseline arm %r has no runs: no acceleration can be computed", baseline)
    root_metrics = path / "metrics.jsonl"
    draws = path / "draws"  # each seed's own beta draw (cropi compare without --shared-rollouts)
    seed_records = {s: read_jsonl(p / "metrics.jsonl") for s, p in (_seed_dirs(draws) if draws.is_dir() else [])
                    if (p / "metrics.jsonl").exists()}
    return Comparison(path=path, arms=arms, baseline=baseline if baseline in arms else None,
                      meta=meta, records=read_jsonl(root_metrics) if root_metrics.exists() else [],
                      seed_records=seed_records)


def load_any(path: str | Path) -> Comparison:
    """A comparison directory, or a single run directory seen as a one-arm comparison."""
    path = Path(path)
    if (path / "compare.json").exists():
        return load_comparison(path)
    if (path / "metrics.jsonl").exists() or (path / "stages").is_dir():
        run = load_run(path)
        return Comparison(path=path, arms={run.arm: [run]}, baseline=None, meta={},
                          single_run=True)
    raise CropiError("is neither a run directory (metrics.jsonl, stages/) nor a comparison "
                     "directory (compare.json)", file=path, fix="pass a run or compare folder")


def score_stats_from_table(path: Path, selected: list[str], fusion: str = "rrf") -> dict[str, Any] | None:
    """Histogram of the fused scores of ``scores.parquet`` (pool vs ``selected``), like
    ``selection.json``'s ``stats.score``, fused for a budget of ``len(selected)`` (tables written
    before fusion moved to selection time carry their own ``fused`` column); None when no score is
    finite."""
    table = read_scores(path)
    ids = table.column("id").to_pylist()
    if "fused" in table.column_names:
        fused = np.array(table.column("fused").to_pylist(), dtype=np.float64)
    else:
        scores = target_scores(table, ids)
        if not scores:
            return None
        fused = fuse(scores, max(len(selected), 1), fusion)
    chosen = set(selected)
    mask = np.array([i in chosen for i in ids], dtype=bool)
    finite = np.isfinite(fused)
    if not finite.any():
        return None
    lo, hi = float(fused[finite].min()), float(fused[finite].max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, SCORE_BINS + 1)
    sel = fused[mask & finite]
    return {"edges": edges.tolist(),
            "pool": np.histogram(fused[finite], bins=edges)[0].tolist(),
            "selected": np.histogram(sel, bins=edges)[0].tolist(),
            "mean_pool": float(fused[finite].mean()),
            "mean_selected": float(sel.mean()) if sel.size else None}


def read_item_results(run: str | Path) -> dict[int, dict[str, list[Any]]]:
    """step -> columns of ``RUN/evals/step_NNNNNN.parquet`` (see :data:`ITEM_COLUMNS`); ``{}``
    when the run has none. A file without the required columns is skipped with a warning."""
    folder = Path(run) / ITEMS_DIR
    if not folder.is_dir():
        return {}
    out: dict[int, dict[str, list[Any]]] = {}
    for path in sorted(folder.iterdir()):
        match = _ITEM_RE.match(path.name)
        if not match:
            continue
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - a damaged file must not stop the report
            log.warning("skipping unreadable per-item results %s: %s", path, exc)
            continue
        missing = [c for c in ITEM_COLUMNS if c not in table.column_names]
        if missing:
            log.warning("skipping per-item results %s: no column %s", path, ", ".join(missing))
            continue
        out[int(match.group(1))] = table.to_pydict()
    return out


def rollout_seconds(records: list[dict[str, Any]], sets: tuple[str, ...],
                    k: dict[str, int] | None = None) -> float:
    """Seconds of beta's rollouts attributable to ``sets`` ("pool", "targets"): per set as measured
    (``seconds_by_set``), else each ``rollouts`` event's seconds shared by the tokens generated per
    set (``work``), else (older runs) by the responses sampled per set (prompts x k, with
    ``k = {"pool": k_pool, "targets": k_target}``; prompts alone when ``k`` is None)."""
    total = 0.0
    for rec in records:
        seconds = _number(rec.get("seconds")) if rec.get("event") == "rollouts" else None
        sampled = rec.get("sampled") if seconds is not None else None
        if seconds is None:
            continue
        by_set = rec.get("seconds_by_set")
        if isinstance(by_set, dict) and by_set:  # measured per set (since the work was counted)
            total += sum(_number(v) or 0.0 for name, v in by_set.items()
                         if ("pool" if name == "pool" else "targets") in sets)
            continue
        work = rec.get("work")
        if isinstance(work, dict) and work:  # split by tokens generated
            sampled = {name: (w or {}).get("tokens_generated", 0) for name, w in work.items()}
            k = None
        if not isinstance(sampled, dict) or not sampled:
            total += seconds if sets else 0.0
            continue
        weight = {name: float(n) * float((k or {}).get("pool" if name == "pool" else "targets", 1))
                  for name, n in sampled.items() if _number(n) is not None}
        whole = sum(weight.values())
        if whole <= 0:
            continue
        mine = sum(w for name, w in weight.items()
                   if ("pool" if name == "pool" else "targets") in sets)
        total += seconds * mine / whole
    return total


WORK_UNITS = "forward-token equivalents: tokens generated, prefilled and forwarded + 3 x tokens backpropagated"
"""The unit of the compute axis (:func:`work_units`): FLOPs / (2 N) for a model of N parameters."""


def work_units(work: Any) -> float:
    """A ``work`` mapping (:class:`cropi.utils.work.Work` as logged) in :data:`WORK_UNITS`."""
    if not isinstance(work, dict):
        return 0.0

    def get(key: str) -> float:
        return _number(work.get(key)) or 0.0
    return get("tokens_generated") + get("tokens_prefill") + get("tokens_forward") + 3.0 * get("tokens_backward")


def rollout_work(records: list[dict[str, Any]], sets: tuple[str, ...]) -> float:
    """Counted work (:func:`work_units`) of beta's rollouts of ``sets`` ("pool", "targets")."""
    total = 0.0
    for rec in records:
        if rec.get("event") == "rollouts" and isinstance(rec.get("work"), dict):
            total += sum(work_units(w) for name, w in rec["work"].items()
                         if ("pool" if name == "pool" else "targets") in sets)
    return total


def stage_score_work(records: list[dict[str, Any]]) -> dict[int, float]:
    """Counted work per stage of scoring (``score`` events) and drift (``drift`` events)."""
    out: dict[int, float] = {}
    for rec in records:
        stage = _number(rec.get("stage"))
        if rec.get("event") in ("score", "drift") and stage is not None and isinstance(rec.get("work"), dict):
            out[int(stage)] = out.get(int(stage), 0.0) + work_units(rec["work"])
    return out


def compute_clock(records: list[dict[str, Any]], setup: float = 0.0,
                  score_floor: dict[int, float] | None = None) -> dict[int, float] | None:
    """step -> counted work (:data:`WORK_UNITS`) before the evaluation at that step, as
    :func:`work_clock` counts seconds: independent of the machine's load. None for runs made
    before the work was counted (no ``work`` in their ``train`` events)."""
    train: dict[int, tuple[float, int]] = {}
    for rec in records:
        steps, stage = _number(rec.get("steps")), _number(rec.get("stage"))
        if rec.get("event") == "train" and None not in (steps, stage) and steps > 0:
            if not isinstance(rec.get("work"), dict):
                return None
            train[int(stage)] = (work_units(rec["work"]), int(steps))
    scores = stage_score_work(records)
    for stage, floor in (score_floor or {}).items():
        if stage in scores or stage in train:
            scores[stage] = max(scores.get(stage, 0.0), floor)
    return _step_clock(records, setup, scores, train)


def stage_score_seconds(records: list[dict[str, Any]]) -> dict[int, float]:
    """Scoring seconds per stage (``score`` events' ``total_s``, summed over resumed attempts)."""
    out: dict[int, float] = {}
    for rec in records:
        seconds, stage = _number(rec.get("total_s")), _number(rec.get("stage"))
        if rec.get("event") == "score" and seconds is not None and stage is not None:
            out[int(stage)] = out.get(int(stage), 0.0) + seconds
    return out


def work_clock(records: list[dict[str, Any]], setup_seconds: float = 0.0,
               score_floor: dict[int, float] | None = None) -> dict[int, float]:
    """step -> seconds of work done before the run's evaluation at that step, evaluation excluded.

    The clock: ``setup_seconds`` (beta's rollouts the arm's policy needs, :func:`rollout_seconds`)
    and stage m's scoring (``score`` events, at least ``score_floor[m]``: stage-0 features shared
    between the runs of a comparison are charged to every run that uses them) are paid before
    stage m's first step; stage m's training seconds (``train`` events, which exclude the
    evaluations) are spread uniformly over its steps. The step-0 evaluation of beta is at 0 s.
    A stage still running (no ``train`` event) uses the mean seconds per step of the finished
    stages; with none finished, its evaluations get no clock.
    """
    train: dict[int, tuple[float, int]] = {}
    for rec in records:
        seconds, steps, stage = (_number(rec.get("seconds")), _number(rec.get("steps")),
                                 _number(rec.get("stage")))
        if rec.get("event") == "train" and None not in (seconds, steps, stage) and steps > 0:
            train[int(stage)] = (seconds, int(steps))
    # training seconds per stage as the time table counts them (evaluation taken out of old runs)
    breakdown = time_breakdown(records)
    for stage, (_, steps) in list(train.items()):
        train[stage] = (breakdown[_stage_label(stage)]["training"], steps)
    scores = stage_score_seconds(records)
    for stage, floor in (score_floor or {}).items():
        if stage in scores or stage in train or any(
                rec.get("event") == "eval" and rec.get("stage") == stage for rec in records):
            scores[stage] = max(scores.get(stage, 0.0), floor)
    return _step_clock(records, setup_seconds, scores, train)


def _step_clock(records: list[dict[str, Any]], setup: float, scores: dict[int, float],
                train: dict[int, tuple[float, int]]) -> dict[int, float]:
    """step -> cost before the evaluation at that step: ``setup``, then per stage its selection's
    cost (``scores``) and its training cost (``train``: stage -> (cost, steps)) spread over its
    steps (see :func:`work_clock`)."""
    rate = (sum(s for s, _ in train.values()) / sum(n for _, n in train.values())) if train else None
    steps_known = [n for _, n in train.values()]
    default_steps = max(set(steps_known), key=steps_known.count) if steps_known else None
    out: dict[int, float] = {}
    for rec in records:
        step, stage = _number(rec.get("step")), _number(rec.get("stage"))
        if rec.get("event") != "eval" or step is None or stage is None:
            continue
        stage, step = int(stage), int(step)
        if stage < 0:
            out[step] = 0.0
            continue
        if rate is None or default_steps is None:
            continue
        clock, start = setup, 0
        for m in range(stage):
            cost, n = train.get(m, (rate * default_steps, default_steps))
            clock += scores.get(m, 0.0) + cost
            start += n
        cost, n = train.get(stage, (rate * default_steps, default_steps))
        clock += scores.get(stage, 0.0) + cost * min(max(step - start, 0), n) / n
        out[step] = clock
    return out
