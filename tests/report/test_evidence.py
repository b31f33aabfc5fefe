"""The evidence axes: interpolated crossings, the paired t interval, the compute clock, rollout
seconds per set (a rebuilt report charges what the live run charged), each seed's own draw."""

from __future__ import annotations

import numpy as np
import pytest

from cropi.report.runs import compute_clock, rollout_seconds, rollout_work, work_units
from cropi.report.stats import Panel, bootstrap, crossing_step, final_diff_t, interpolated_ratio, paired_t


def test_crossing_is_interpolated_between_evaluations() -> None:
    steps = np.array([0, 5, 10, 15, 20])
    curve = np.array([[0.1, 0.2, 0.4, 0.5, 0.6]])
    assert crossing_step(curve, steps, np.array([0.3]))[0] == pytest.approx(7.5)
    assert crossing_step(curve, steps, np.array([0.4]))[0] == pytest.approx(10.0)
    assert crossing_step(curve, steps, np.array([0.05]))[0] == 0.0  # reached at the first evaluation
    assert np.isnan(crossing_step(curve, steps, np.array([0.7]))[0])


def test_interpolated_ratio_conventions() -> None:
    r = interpolated_ratio(np.array([20.0, 20.0, 20.0, 0.0]), np.array([8.0, np.nan, 0.0, 0.0]), 0.0)
    assert r[0] == pytest.approx(2.5) and r[1] == 0.0 and r[2] == np.inf and np.isnan(r[3])


def _panel(curves: dict[str, list[list[float]]], steps: list[int], compute=None) -> Panel:
    arms = list(curves)
    values = np.array([curves[a] for a in arms])[..., None]  # one pseudo-item
    return Panel(arms=arms, seeds=list(range(values.shape[1])), steps=np.array(steps), values=values,
                 strata=np.zeros(1, dtype=np.int64), items=False, compute=compute)


def test_bootstrap_reports_the_paired_t_interval_and_interpolated_acceleration() -> None:
    steps = [0, 5, 10, 15, 20]
    full = [[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.25, 0.3, 0.45, 0.5], [0.1, 0.2, 0.35, 0.4, 0.55]]
    fast = [[0.1, 0.5, 0.6, 0.6, 0.6], [0.1, 0.45, 0.6, 0.65, 0.6], [0.1, 0.5, 0.55, 0.6, 0.65]]
    res = bootstrap(_panel({"full": full, "cropi": fast}, steps), "full", n_boot=200,
                    smooth_kw={"method": "none"})["arms"]["cropi"]
    auc = lambda c: np.trapezoid(c, steps) / 20  # noqa: E731
    d = np.array([auc(a) - auc(b) for a, b in zip(fast, full)])
    from scipy import stats

    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert res["area_diff_t"]["value"] == pytest.approx(d.mean())
    assert (res["area_diff_t"]["lo"], res["area_diff_t"]["hi"]) == pytest.approx((ci.low, ci.high))
    # seed means: full reaches its final 0.5167 at step 20; cropi (0.483 at step 5, 0.583 at 10)
    # crosses it at 5 + 5 x (0.5167 - 0.4833) / 0.1 = 6.67: 3.0x, where the grid says 20 / 10
    mean_full, mean_fast = np.mean(full, axis=0), np.mean(fast, axis=0)
    a_star = mean_full[-1]
    s_fast = 5 + (a_star - mean_fast[1]) / (mean_fast[2] - mean_fast[1]) * 5
    assert res["accel_interp"]["value"] == pytest.approx(20 / s_fast) == pytest.approx(3.0)
    assert res["accel"]["value"] == pytest.approx(2.0)
    assert res["reach_step"]["value"] == pytest.approx(s_fast)
    assert res["accel_interp"]["lo"] <= res["accel_interp"]["value"] <= res["accel_interp"]["hi"]


def test_pairwise_area_intervals_are_paired_t_between_every_two_arms() -> None:
    steps = [0, 10, 20]
    curves = {"full": [[0.1, 0.2, 0.3], [0.1, 0.3, 0.2], [0.1, 0.2, 0.2]],
              "cropi": [[0.1, 0.4, 0.5], [0.1, 0.3, 0.4], [0.1, 0.5, 0.4]],
              "once": [[0.1, 0.4, 0.4], [0.1, 0.3, 0.5], [0.1, 0.3, 0.4]]}
    arms = bootstrap(_panel(curves, steps), "full", n_boot=50, smooth_kw={"method": "none"})["arms"]
    from scipy import stats

    auc = lambda c: np.trapezoid(c, steps) / 20  # noqa: E731
    d = np.array([auc(a) - auc(b) for a, b in zip(curves["cropi"], curves["once"], strict=True)])
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    got = arms["cropi"]["area_diff_t_vs"]["once"]
    assert (got["value"], got["lo"], got["hi"]) == pytest.approx((d.mean(), ci.low, ci.high))
    back = arms["once"]["area_diff_t_vs"]["cropi"]
    assert (back["value"], back["lo"], back["hi"]) == pytest.approx((-d.mean(), -ci.high, -ci.low))
    assert arms["cropi"]["area_diff_t_vs"]["full"] == pytest.approx(arms["cropi"]["area_diff_t"])
    assert "area_diff_t" not in arms["full"] and set(arms["full"]["area_diff_t_vs"]) == {"cropi", "once"}


def test_pairwise_rows_list_every_two_arms_once_against_the_baseline_first() -> None:
    """The baseline is named, not taken from the arms' order (statistics.json sorts its keys)."""
    from cropi.report.summary import DASH, pairwise_rows

    ci = lambda v: {"value": v, "lo": v - 0.01, "hi": v + 0.01}  # noqa: E731
    boot = {"arms": {"cropi": {"area_diff_t_vs": {"full": ci(0.05), "once": ci(0.01)}},
                     "full": {"area_diff_t_vs": {"cropi": ci(-0.05), "once": ci(-0.04)}},
                     "once": {"area_diff_t_vs": {"full": ci(0.04), "cropi": ci(-0.01)}}},
            "untargeted_final_diff_t": {"cropi": ci(-0.02), "once": ci(0.0)}}
    rows = pairwise_rows(boot, "full")
    assert [r[:2] for r in rows] == [["cropi", "full"], ["once", "full"], ["cropi", "once"]]
    assert rows[0][2:] == ["+0.050 [+0.040, +0.060]", "-0.020 [-0.030, -0.010]"]
    assert rows[2][2:] == ["+0.010 [+0.000, +0.020]", DASH]  # untargeted: against the baseline only
    assert pairwise_rows({"arms": {"full": {}, "cropi": {}}}, "full") == []  # one seed: no t intervals


def test_final_difference_is_paired_by_seed_at_the_last_step() -> None:
    curves = {"full": [[0.1, 0.30], [0.1, 0.20], [0.1, 0.25]], "cropi": [[0.1, 0.35], [0.1, 0.20], [0.1, 0.35]]}
    got = final_diff_t(_panel(curves, [0, 10]), "full")
    assert set(got) == {"cropi"}
    assert got["cropi"] == pytest.approx(paired_t(np.array([0.05, 0.0, 0.10])))
    assert got["cropi"]["value"] == pytest.approx(0.05) and got["cropi"]["lo"] < 0 < got["cropi"]["hi"]
    same = paired_t(np.array([0.02, 0.02, 0.02]))  # no spread: the interval is the point
    assert same == pytest.approx({"value": 0.02, "lo": 0.02, "hi": 0.02})
    with pytest.raises(ValueError, match="at least 2"):
        paired_t(np.array([0.1]))


def test_compute_accel_reads_the_compute_at_the_crossing() -> None:
    steps = [0, 10, 20]
    full = [[0.1, 0.3, 0.5], [0.1, 0.3, 0.5]]
    fast = [[0.1, 0.5, 0.6], [0.1, 0.5, 0.6]]
    compute = np.array([[[0, 100, 200]] * 2, [[50, 100, 150]] * 2], dtype=float)  # cropi pays 50 up front
    res = bootstrap(_panel({"full": full, "cropi": fast}, steps, compute), "full", n_boot=50,
                    smooth_kw={"method": "none"})["arms"]["cropi"]
    assert res["compute_accel"]["value"] == pytest.approx(200 / 100)  # full at step 20, cropi at step 10


def test_compute_clock_charges_rollouts_scoring_and_training_work() -> None:
    w = lambda **kw: {"tokens_generated": 0, "tokens_prefill": 0, "tokens_forward": 0, "tokens_backward": 0, **kw}  # noqa: E731
    assert work_units(w(tokens_generated=10, tokens_backward=2)) == 16
    records = [
        {"event": "score", "stage": 0, "work": w(tokens_backward=10)},
        {"event": "eval", "stage": -1, "step": 0},
        {"event": "train", "stage": 0, "steps": 4, "seconds": 1.0, "work": w(tokens_generated=40, tokens_backward=40)},
        {"event": "eval", "stage": 0, "step": 2},
        {"event": "eval", "stage": 0, "step": 4},
    ]
    clock = compute_clock(records, setup=100.0)
    assert clock == {0: 0.0, 2: 100 + 30 + 80, 4: 100 + 30 + 160}
    assert compute_clock([{**r, "work": None} if r["event"] == "train" else r for r in records]) is None


def test_rollout_seconds_per_set_as_measured_else_by_tokens() -> None:
    live = {"event": "rollouts", "seconds": 100.0, "sampled": {"pool": 10, "targets/a": 10},
            "seconds_by_set": {"pool": 30.0, "targets/a": 70.0},
            "work": {"pool": {"tokens_generated": 800}, "targets/a": {"tokens_generated": 3200}}}
    assert rollout_seconds([live], ("pool",)) == 30.0 and rollout_seconds([live], ("pool", "targets")) == 100.0
    older = {k: v for k, v in live.items() if k != "seconds_by_set"}
    assert rollout_seconds([older], ("pool",)) == pytest.approx(20.0)  # 800 of 4000 tokens
    assert rollout_seconds([older], ("targets",), {"pool": 8, "targets": 32}) == pytest.approx(80.0)
    assert rollout_work([live], ("targets",)) == 3200
