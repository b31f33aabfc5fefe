"""Compact per-seed results of a comparison: small JSON files that can be committed, and restored
into a comparison directory that ``cropi report`` reads, so that a long benchmark can be continued
by a later session on another machine (benchmarks/acceleration.py).

One file per arm x seed (:func:`export_run`), with what the statistics need and nothing heavy:

- ``events``: the run's ``eval`` events (step, stage, metric, targeted/untargeted accuracy, format
  shares, per-set accuracies), ``eval_time``, ``rollouts``, ``score`` and ``train`` events, with
  only their numeric fields;
- ``selections``: per stage, the selection's policy, budget, ids and its statistics;
- ``items``: per-item results, ``{"order": {set: [ids]}, "modes": {mode: {step: {set: X}}}}``
  where X is a string of ``0``/``1`` digits (greedy) or a list of rewards rounded to 4 digits
  (mean@k), in the set's ``order``; ``strict`` the same for the strict-format shares, if stored.

:func:`restore_run` writes ``metrics.jsonl``, ``stages/stage_NNN/selection.json`` and
``evals/step_NNNNNN.parquet`` back (no checkpoints, no stage state: a restored run is for reports
only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cropi.report.runs import ITEMS_DIR, RunData, load_run, read_item_results
from cropi.utils.io import atomic_path, atomic_write_json, atomic_write_text

FORMAT = 1
KEEP_EVENTS = ("eval", "eval_time", "rollouts", "score", "train")
_DROP_KEYS = ("time",)


def _slim(rec: dict[str, Any]) -> dict[str, Any]:
    """An event without timestamps and without the per-family/per-level breakdowns."""
    out = {k: v for k, v in rec.items() if k not in _DROP_KEYS}
    if rec.get("event") == "eval" and isinstance(rec.get("sets"), dict):
        out["sets"] = {name: {k: v for k, v in s.items() if "_by_" not in k}
                       for name, s in rec["sets"].items() if isinstance(s, dict)}
    return out


def _encode(values: list[float]) -> str | list[float]:
    if all(v in (0.0, 1.0) for v in values):
        return "".join("1" if v else "0" for v in values)
    return [round(float(v), 4) for v in values]


def _decode(x: str | list[float]) -> list[float]:
    return [float(c) for c in x] if isinstance(x, str) else [float(v) for v in x]


def export_run(run: RunData | str | Path) -> dict[str, Any]:
    """The compact record of one run directory (see the module docstring)."""
    run = run if isinstance(run, RunData) else load_run(run)
    events = [_slim(r) for r in run.records if r.get("event") in KEEP_EVENTS]
    selections = [{"stage": s.index, **{k: s.selection.get(k) for k in
                                        ("policy", "budget", "n_selected", "ids", "stats", "ratio",
                                         "seed", "fusion", "scorer", "target_sources")
                                        if k in s.selection}}
                  for s in run.stages if s.selection is not None]
    order: dict[str, list[str]] = {}
    modes: dict[str, dict[str, dict[str, Any]]] = {}
    strict: dict[str, dict[str, dict[str, Any]]] = {}
    for step, cols in sorted(read_item_results(run.path).items()):
        rows: dict[tuple[str, str], dict[str, tuple[float, float | None]]] = {}
        has_strict = "strict" in cols
        for i, (s, item, mode, reward) in enumerate(zip(cols["set"], cols["id"], cols["mode"],
                                                        cols["reward"], strict=True)):
            rows.setdefault((str(mode), str(s)), {})[str(item)] = (
                float(reward), float(cols["strict"][i]) if has_strict and cols["strict"][i] is not None
                else None)
        for (mode, s), by_id in rows.items():
            ids = order.setdefault(s, sorted(by_id))
            if set(ids) != set(by_id):
                raise ValueError(f"{run.path}: step {step} set {s} evaluated other items than "
                                 "earlier steps")
            modes.setdefault(mode, {}).setdefault(str(step), {})[s] = _encode(
                [by_id[i][0] for i in ids])
            if all(by_id[i][1] is not None for i in ids):
                strict.setdefault(mode, {}).setdefault(str(step), {})[s] = _encode(
                    [by_id[i][1] for i in ids])
    items = {"order": order, "modes": modes, **({"strict": strict} if strict else {})}
    return {"format": FORMAT, "arm": run.arm, "seed": run.seed, "events": events,
            "selections": selections, "items": items if modes else None}


def write_compact(record: dict[str, Any], path: str | Path) -> Path:
    """Write a compact record as one JSON file (atomically)."""
    atomic_write_text(path, json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n")
    return Path(path)


def restore_run(record: dict[str, Any] | str | Path, dest: str | Path) -> Path:
    """Write a compact record back as a run directory ``dest`` that ``cropi report`` reads."""
    if not isinstance(record, dict):
        record = json.loads(Path(record).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"compact record format {record.get('format')!r}; this cropi reads {FORMAT}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "metrics.jsonl",
                      "".join(json.dumps(e) + "\n" for e in record["events"]))
    for sel in record["selections"]:
        body = {k: v for k, v in sel.items() if k != "stage"}
        body.setdefault("n_selected", len(body.get("ids", [])))
        body.setdefault("format_version", 1)
        atomic_write_json(dest / "stages" / f"stage_{int(sel['stage']):03d}" / "selection.json", body)
    items = record.get("items")
    if items:
        order = items["order"]
        steps = sorted({int(s) for by_step in items["modes"].values() for s in by_step})
        for step in steps:
            cols: dict[str, list[Any]] = {"set": [], "id": [], "mode": [], "reward": []}
            strict_col: list[float | None] = []
            for mode, by_step in items["modes"].items():
                strict = (items.get("strict") or {}).get(mode, {}).get(str(step), {})
                for s, enc in by_step.get(str(step), {}).items():
                    rewards = _decode(enc)
                    shares = _decode(strict[s]) if s in strict else [None] * len(rewards)
                    for item, reward, share in zip(order[s], rewards, shares, strict=True):
                        cols["set"].append(s)
                        cols["id"].append(item)
                        cols["mode"].append(mode)
                        cols["reward"].append(reward)
                        strict_col.append(share)
            if any(v is not None for v in strict_col):
                cols["strict"] = strict_col
            path = dest / ITEMS_DIR / f"step_{step:06d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                pq.write_table(pa.table(cols), tmp)
    return dest
