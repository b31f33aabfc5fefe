"""The acceleration table of a comparison whose seeds differ, every number computed by hand:
the seed-mean row, the per-seed ratios, mean ± sd of the final accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cropi.report import build_report
from cropi.select import SelectionContext, selection_stats, write_selection

STEPS = [0, 10, 20, 30, 40]
N_POOL = 10
# arm -> seed -> (targeted curve at STEPS, constant untargeted accuracy)
CURVES = {
    "cropi": {0: ([0.2, 0.6, 0.6, 0.6, 0.6], 0.3), 1: ([0.2, 0.3, 0.4, 0.5, 0.7], 0.5)},
    "full": {0: ([0.2, 0.3, 0.4, 0.5, 0.6], 0.2), 1: ([0.2, 0.3, 0.4, 0.5, 0.4], 0.2)},
    "random": {0: ([0.2, 0.3, 0.3, 0.3, 0.3], 0.1), 1: ([0.2, 0.3, 0.4, 0.4, 0.45], 0.1)},
}


def _write_run(root: Path, targeted: list[float], untargeted: float, n_select: int) -> None:
    root.mkdir(parents=True)
    events = [{"event": "eval", "stage": -1 if step == 0 else 0, "step": step, "targeted": acc,
               "untargeted": untargeted, "metric": "greedy"} for step, acc in zip(STEPS, targeted)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    ids = [f"p{i}" for i in range(N_POOL)]
    ctx = SelectionContext(ids=ids, pass_rate=np.linspace(0, 1, N_POOL), fused=None,
                           source=["arith"] * N_POOL, level=[None] * N_POOL, seed=0)
    write_selection(root / "stages" / "stage_000" / "selection.json", "x", n_select, ids[:n_select],
                    selection_stats(ctx, ids[:n_select]))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cmp = tmp_path_factory.mktemp("seeds") / "cmp"
    for arm, seeds in CURVES.items():
        for seed, (targeted, untargeted) in seeds.items():
            _write_run(cmp / "arms" / arm / f"seed_{seed}", targeted, untargeted,
                       N_POOL if arm == "full" else 2)
    (cmp / "compare.json").write_text(json.dumps({"arms": list(CURVES), "seeds": [0, 1],
                                                  "baseline": "full", "steps": 40, "eval_every": 10}))
    return cmp


def _rows(md: str) -> dict[str, str]:
    return {arm: next(line for line in md.splitlines() if line.startswith(f"| {arm} |")) for arm in CURVES}


def test_unsmoothed_table_by_hand(comparison: Path, tmp_path: Path) -> None:
    md = (build_report(comparison, tmp_path / "none", method="none") / "report.md").read_text()
    rows = _rows(md)
    # full seed mean 0.2 .3 .4 .5 .5: a* = 0.5 (mean of the finals .6, .4), first reached at 30.
    # cropi seed mean .2 .45 .5 .55 .65 reaches .5 at 20 -> 30/20; seed 0 at 10 -> 3x, seed 1 at 30.
    # random seed mean .2 .3 .35 .35 .375 never does: gap .5 - .375; seeds: .5 - .3, .5 - .45.
    # finals: cropi .6, .7 -> 0.650 ± sd sqrt(2 * .05^2) = 0.071; full .6, .4 -> 0.500 ± 0.141.
    assert rows["cropi"] == ("| cropi | 0, 1 | 0.650 ± 0.071 | 0.400 ± 0.141 | 20 | 1.50x | "
                             "0: 3.00x, 1: 1.00x | 2/10 (20%) |")
    assert rows["full"] == ("| full | 0, 1 | 0.500 ± 0.141 | 0.200 ± 0.000 | 30 | 1.00x | "
                            "0: 1.00x, 1: 1.00x | 10/10 (100%) |")
    assert rows["random"] == ("| random | 0, 1 | 0.375 ± 0.106 | 0.100 ± 0.000 | — | < 1 (gap 0.125) | "
                              "0: < 1 (gap 0.200), 1: < 1 (gap 0.050) | 2/10 (20%) |")
    assert "a* = 0.5000" in md and "first reached by the baseline at step 30" in md


def test_default_ema_table_by_hand(comparison: Path, tmp_path: Path) -> None:
    md = (build_report(comparison, tmp_path / "ema") / "report.md").read_text()
    rows = _rows(md)
    # EMA (alpha 0.5) of the full seed mean: .2 .25 .325 .4125 .45625 -> a* = .45625 at step 40.
    # cropi seed mean: .2 .325 .4125 .48125 -> step 30, 40/30; seed 0: .2 .4 .5 -> step 20, 2x;
    # seed 1: .2 .25 .325 .4125 .55625 -> step 40, 1x. full seed 1: .2 .25 .325 .4125 .40625
    # -> gap .45625 - .4125. random seed mean .2 .25 .3 .325 .35 -> gap .10625; seed 0 tops at
    # .29375 (gap .1625), seed 1 at .40625 (gap .05).
    assert rows["cropi"] == ("| cropi | 0, 1 | 0.650 ± 0.071 | 0.400 ± 0.141 | 30 | 1.33x | "
                             "0: 2.00x, 1: 1.00x | 2/10 (20%) |")
    assert rows["full"] == ("| full | 0, 1 | 0.500 ± 0.141 | 0.200 ± 0.000 | 40 | 1.00x | "
                            "0: 1.00x, 1: < 1 (gap 0.044) | 10/10 (100%) |")
    assert rows["random"] == ("| random | 0, 1 | 0.375 ± 0.106 | 0.100 ± 0.000 | — | < 1 (gap 0.106) | "
                              "0: < 1 (gap 0.163), 1: < 1 (gap 0.050) | 2/10 (20%) |")
    assert "a* = 0.4562" in md and "first reached by the baseline at step 40" in md
