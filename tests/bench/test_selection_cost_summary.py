"""benchmarks/selection_cost.py's summary, on hand-made cells: which pairs enter each overlap, the
means, the speed-ups and the stage-1 fields, against naive recomputations."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from cropi.bench.selection_cost_summary import draws_of, summarize

N_POOL, N_PICK = 30, 3
IDS = [f"p{i:02d}" for i in range(N_POOL)]
SOURCE = ["lcm20" if i % 3 == 0 else "other" for i in range(N_POOL)]  # rg-lcm-seq's lcm family: a third


def _cell(seed: int, order: list[int], zero: list[int], total: float, generated: int) -> dict[str, Any]:
    """A cell whose score table ranks ``order`` first (both targets alike) and whose picks are its top
    N_PICK; ``zero`` have no gradient (no score)."""
    score = np.zeros(N_POOL)
    score[order] = np.arange(len(order), 0, -1, dtype=float)
    values = [None if i in zero else float(score[i]) for i in range(N_POOL)]
    picks = [IDS[i] for i in order if i not in zero][:N_PICK]
    return {"seed": seed, "picks": picks, "seconds": {"total": total},
            "work": {"total": {"tokens_generated": generated, "tokens_backward": generated // 2}},
            "scores": {"ids": IDS, "source": SOURCE, "zero": sorted(zero),
                       "targets": {"lcm": values, "seq": values}}}


def _naive_enrichment(cell: dict[str, Any]) -> float:
    zero = set(cell["scores"]["zero"])
    grad = [i for i in range(N_POOL) if i not in zero]
    base = np.mean([SOURCE[i] == "lcm20" for i in grad])
    return float(np.mean([SOURCE[IDS.index(p)] == "lcm20" for p in cell["picks"]]) / base)


def _naive_shares(cell: dict[str, Any]) -> tuple[float, float]:
    zero = set(cell["scores"]["zero"])
    picks = float(np.mean([SOURCE[IDS.index(p)] == "lcm20" for p in cell["picks"]]))
    return picks, float(np.mean([SOURCE[i] == "lcm20" for i in range(N_POOL) if i not in zero]))


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> float:
    return len(set(a["picks"]) & set(b["picks"])) / N_PICK


@pytest.fixture(scope="module")
def cells() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {}
    for name, seed, total, gen in [("today-r0", 0, 1000.0, 9000), ("today-r1", 1, 1100.0, 9100),
                                   ("today-r2", 2, 1050.0, 8900), ("new-r1", 1, 250.0, 3000),
                                   ("new-r2", 2, 240.0, 3100)]:
        out[name] = _cell(seed, [int(i) for i in rng.permutation(N_POOL)], [int(i) for i in rng.choice(N_POOL, 4, replace=False)],
                          total, gen)
    for name, total in [("stage1-today-r0", 600.0), ("stage1-new-r1", 120.0), ("stage1-new-r1-shortlist", 100.0)]:
        out[name] = _cell(0, [int(i) for i in rng.permutation(N_POOL)], [], total, 0)
    return out


def test_draws_of_in_seed_order_and_only_stage0(cells: dict[str, Any]) -> None:
    assert list(draws_of(cells, "today")) == ["today-r0", "today-r1", "today-r2"]
    assert list(draws_of(cells, "new")) == ["new-r1", "new-r2"]


def test_summary_against_naive(cells: dict[str, Any]) -> None:
    out = summarize("rg-lcm-seq", cells, ["today", "new"], "new")
    assert out is not None
    s = out["summary"]
    today = [cells[f"today-r{i}"] for i in range(3)]
    floor = np.mean([_overlap(a, b) for a, b in itertools.combinations(today, 2)])
    cross = np.mean([_overlap(cells[f"new-r{i}"], cells[f"today-r{j}"]) for i in (1, 2) for j in range(3) if i != j])
    assert s["noise_floor_overlap"] == pytest.approx(floor)
    assert len(out["noise_floor_pairs"]) == 3
    assert s["overlap_new_vs_today"] == pytest.approx(cross)
    assert len(out["configs"]["new"]["overlap_vs_today_pairs"]) == 4
    assert s["speedup_stage0"] == pytest.approx(1000.0 / 250.0)
    assert out["configs"]["new"]["speedup_seconds_by_draw"] == pytest.approx({"new-r1": 4.0, "new-r2": 1000.0 / 240.0})
    assert out["configs"]["new"]["speedup_work_generated"] == pytest.approx(9000 / 3000)
    assert s["speedup_stage1"] == pytest.approx(600.0 / 120.0)
    assert out["stage1"]["speedup_shortlist"] == pytest.approx(6.0)
    assert out["stage1"]["shortlist_overlap_vs_full"] == pytest.approx(
        _overlap(cells["stage1-new-r1"], cells["stage1-new-r1-shortlist"]))
    assert s["enrichment_today"] == pytest.approx(np.mean([_naive_enrichment(c) for c in today]))
    assert s["enrichment_new"] == pytest.approx(np.mean([_naive_enrichment(cells[f"new-r{i}"]) for i in (1, 2)]))
    assert s["enrichment_today_lo"] <= s["enrichment_today"]
    # the ratio's parts: picks' share in the target families, that share among prompts with a gradient
    naive = np.mean([_naive_shares(cells[f"new-r{i}"]) for i in (1, 2)], axis=0)
    new = out["configs"]["new"]
    assert (new["target_share_picks"], new["target_share_grad"]) == pytest.approx(tuple(naive))
    assert new["target_share_pool"] == pytest.approx(1 / 3)
    assert out["today_target_share_picks"] == pytest.approx(np.mean([_naive_shares(c)[0] for c in today]))
    assert (s["draws_today"], s["draws_new"]) == (3, 2)
    # the today configuration is the reference: its own entry compares today's seeds >= 1 with today's draws
    assert set(out["configs"]) == {"today", "new"}


def test_no_summary_before_two_of_todays_draws(cells: dict[str, Any]) -> None:
    assert summarize("rg-lcm-seq", {"today-r0": cells["today-r0"], "new-r1": cells["new-r1"]},
                     ["today", "new"], "new") is None
