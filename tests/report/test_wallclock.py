"""The wall-clock axis: seconds of work at each evaluation, evaluation excluded, beta's rollouts and
scoring charged to the arms that use them; and the wall-clock acceleration of a comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cropi.report import build_report
from cropi.report.runs import load_comparison, rollout_seconds, work_clock
from cropi.report.stats import bootstrap, comparison_panel
from cropi.select import SelectionContext, selection_stats, write_selection

ROLLOUTS = {"event": "rollouts", "seconds": 60.0, "sampled": {"pool": 10, "targets/chain": 5}}


def _events(score: dict[int, float], train: dict[int, float], acc: list[float],
            legacy: bool = False) -> list[dict]:
    """Two stages of 10 steps, evaluations every 5 steps (50 s each, never on the clock)."""
    out = [{"event": "eval", "stage": -1, "step": 0, "targeted": acc[0], "metric": "greedy"},
           {"event": "eval_time", "stage": -1, "seconds": 50.0}]
    for stage in (0, 1):
        if stage in score:
            out.append({"event": "score", "stage": stage, "total_s": score[stage]})
        for j, step in enumerate((10 * stage + 5, 10 * stage + 10)):
            out += [{"event": "eval", "stage": stage, "step": step, "targeted": acc[1 + 2 * stage + j],
                     "metric": "greedy"},
                    {"event": "eval_time", "stage": stage, "seconds": 50.0}]
        rec = {"event": "train", "stage": stage, "seconds": train[stage], "steps": 10}
        if legacy:  # written before training was timed apart: seconds include the evaluations
            rec["seconds"] += 100.0
        else:
            rec["eval_seconds"] = 100.0
        out.append(rec)
    return out


def test_rollout_share_by_responses() -> None:
    k = {"pool": 8, "targets": 16}
    assert rollout_seconds([ROLLOUTS], ("pool",), k) == pytest.approx(30.0)  # 80 of 160 responses
    assert rollout_seconds([ROLLOUTS], ("pool", "targets"), k) == pytest.approx(60.0)
    assert rollout_seconds([ROLLOUTS], (), k) == 0.0


@pytest.mark.parametrize("legacy", [False, True])
def test_work_clock_excludes_evaluation(legacy: bool) -> None:
    records = _events({0: 30.0, 1: 20.0}, {0: 100.0, 1: 200.0}, [0.1] * 5, legacy)
    clock = work_clock(records, setup_seconds=60.0)
    assert clock == pytest.approx({0: 0.0, 5: 60 + 30 + 50, 10: 60 + 30 + 100,
                                   15: 60 + 30 + 100 + 20 + 100, 20: 60 + 30 + 100 + 20 + 200})
    # stage 0's features computed by another run: charged at least the floor
    floor = work_clock(_events({0: 1.0}, {0: 100.0, 1: 200.0}, [0.1] * 5), 0.0, {0: 30.0})
    assert floor[10] == pytest.approx(130.0) and floor[20] == pytest.approx(330.0)


def _write_run(root: Path, policy: str, records: list[dict]) -> None:
    root.mkdir(parents=True)
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ids = [f"p{i}" for i in range(4)]
    ctx = SelectionContext(ids=ids, pass_rate=np.full(4, 0.5), fused=None, source=["a"] * 4,
                           level=[None] * 4)
    write_selection(root / "stages" / "stage_000" / "selection.json", policy, 2, ids[:2],
                    selection_stats(ctx, ids[:2]))


def test_wallclock_acceleration_of_a_comparison(tmp_path: Path) -> None:
    """cropi reaches full's final accuracy at step 10 (full: step 20) -> 2x in steps; in seconds
    cropi pays beta's rollouts (60 s), scoring (30 + 20 s) and its training, evaluation never:
    full at step 20: 2 x 100 + 2 x 100 = 400 s; cropi at step 10: 60 + 30 + 100 = 190 s."""
    cmp = tmp_path / "cmp"
    full = [0.2, 0.3, 0.4, 0.5, 0.6]
    fast = [0.2, 0.5, 0.6, 0.6, 0.6]
    for seed in (0, 1):
        _write_run(cmp / "arms" / "full" / f"seed_{seed}", "full",
                   _events({}, {0: 200.0, 1: 200.0}, full))
        _write_run(cmp / "arms" / "cropi" / f"seed_{seed}", "influence",
                   _events({0: 30.0, 1: 20.0}, {0: 100.0, 1: 200.0}, fast))
    (cmp / "compare.json").write_text(json.dumps({"arms": ["cropi", "full"], "seeds": [0, 1],
                                                  "baseline": "full", "steps": 20}))
    (cmp / "metrics.jsonl").write_text(json.dumps(ROLLOUTS) + "\n")
    (cmp / "config.yaml").write_text(yaml.safe_dump({"rollout": {"k_pool": 8, "k_target": 16}}))
    panel = comparison_panel(load_comparison(cmp))
    assert panel is not None and panel.clock is not None
    np.testing.assert_allclose(panel.clock[0, 0], [0, 100, 200, 300, 400])
    np.testing.assert_allclose(panel.clock[1, 0], [0, 140, 190, 310, 410])
    r = bootstrap(panel, "full", n_boot=100, smooth_kw={"method": "none"})["arms"]["cropi"]
    assert r["accel"]["value"] == pytest.approx(2.0)
    assert r["wall_accel"]["value"] == pytest.approx(400 / 190)
    assert r["reach_seconds"] == pytest.approx(190.0)
    md = (build_report(cmp, tmp_path / "rep", n_boot=100, method="none") / "report.md").read_text()
    assert "accuracy_wallclock.png" in md and "2.11x" in md
    assert "per-item results missing" in md
