"""Compact per-seed results round-trip: export a run directory, restore it, get the same
statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cropi.report.compact import export_run, restore_run, write_compact
from cropi.report.runs import load_run, read_item_results
from cropi.select import SelectionContext, selection_stats, write_selection


def _run(root: Path) -> Path:
    (root / "evals").mkdir(parents=True)
    events = [{"event": "rollouts", "seconds": 5.0, "sampled": {"pool": 4}, "time": 1.0}]
    for step, rewards in ((0, [0.0, 1.0, 0.0]), (10, [1.0, 1.0, 0.0])):
        pq.write_table(pa.table({"set": ["targeted/a"] * 2 + ["targeted/b"], "id": ["x", "y", "z"],
                                 "mode": ["greedy"] * 3, "reward": rewards,
                                 "strict": [1.0, 0.0, 1.0]}),
                       root / "evals" / f"step_{step:06d}.parquet")
        events.append({"event": "eval", "stage": 0, "step": step, "targeted": 0.5, "metric": "greedy",
                       "sets": {"targeted/a": {"greedy": 0.5, "greedy_by_family": {"a": 0.5}}}})
    events.append({"event": "train", "stage": 0, "seconds": 9.0, "eval_seconds": 2.0, "steps": 10})
    (root / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    ctx = SelectionContext(ids=["p0", "p1"], pass_rate=[0.5, 0.5], fused=None, source=["a", "a"],
                           level=[None, None])
    write_selection(root / "stages" / "stage_000" / "selection.json", "oracle", 1, ["p1"],
                    selection_stats(ctx, ["p1"]), target_sources=["a"])
    return root


def test_round_trip(tmp_path: Path) -> None:
    src = _run(tmp_path / "arms" / "oracle" / "seed_3")
    record = export_run(src)
    assert record["seed"] == 3 and record["items"]["modes"]["greedy"]["10"] == {
        "targeted/a": "11", "targeted/b": "0"}
    assert "greedy_by_family" not in record["events"][1]["sets"]["targeted/a"]
    path = write_compact(record, tmp_path / "c" / "seed_3.json")
    dest = restore_run(path, tmp_path / "restored" / "seed_3")
    again = load_run(dest, "oracle")
    assert again.curve("targeted")[0].tolist() == [0, 10]
    assert again.policy == "oracle" and again.stages[0].selection["target_sources"] == ["a"]
    assert read_item_results(dest) == read_item_results(src)
    assert export_run(again) == {**record, "arm": "oracle"}
