"""The hierarchical bootstrap of cropi.report.stats on synthetic panels with a known difference,
its agreement with the scalar acceleration and with scipy.stats.bootstrap, probability of
improvement by hand, and the power analysis against textbook values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from cropi.report.acceleration import acceleration
from cropi.report.power import (
    implied_area_difference,
    paired_t_power,
    power_analysis,
    power_table,
    seeds_needed,
    variance_components,
)
from cropi.report.stats import Panel, area, bootstrap
from cropi.report.summary import format_ratio_ci

STEPS = np.arange(0, 45, 5)
BASE = 0.3 + 0.2 * (1 - np.exp(-STEPS / 15))


def synthetic(rng: np.random.Generator, delta: float, n_seeds: int = 5, n_items: int = 60,
              seed_sd: float = 0.03, item_sd: float = 0.2, noise: float = 0.1) -> Panel:
    """Y[a, s, t, i] = base(t) + delta * [a = arm] + u[a, s] + v[i] + e: the true area difference
    of the arm over the baseline is exactly ``delta`` (two sets of items, equal sizes)."""
    v = rng.normal(0, item_sd, n_items)
    u = rng.normal(0, seed_sd, (2, n_seeds))
    y = (BASE[None, None, :, None] + delta * np.arange(2)[:, None, None, None]
         + u[:, :, None, None] + v[None, None, None, :]
         + rng.normal(0, noise, (2, n_seeds, STEPS.size, n_items)))
    return Panel(arms=["full", "x"], seeds=list(range(n_seeds)), steps=STEPS, values=y,
                 strata=np.repeat([0, 1], n_items // 2), items=True)


@pytest.mark.parametrize("items", ["crossed", "nested"])
def test_interval_covers_a_known_difference_and_excludes_zero(items: str) -> None:
    rng = np.random.default_rng(0)
    small = bootstrap(synthetic(rng, 0.02), "full", n_boot=1000, items=items)["arms"]["x"]
    assert small["area_diff"]["lo"] <= 0.02 <= small["area_diff"]["hi"]
    large = bootstrap(synthetic(rng, 0.15), "full", n_boot=1000, items=items)["arms"]["x"]
    assert large["area_diff"]["lo"] > 0 and large["area_diff"]["lo"] <= 0.15 <= large["area_diff"]["hi"]
    assert large["poi"]["value"] == 1.0 and large["poi"]["lo"] == 1.0
    assert large["area_diff_t"]["lo"] > 0


def test_coverage_on_synthetic_panels() -> None:
    """Nominal 95 %: about right with 10 seeds; percentile intervals under-cover with 3 seeds
    (bootstrap variance (n-1)/n, z instead of t), where the paired t interval does not."""
    rng = np.random.default_rng(1)
    cover = {}
    for n_seeds in (3, 10):
        hits_boot = hits_t = 0
        for k in range(60):
            r = bootstrap(synthetic(rng, 0.05, n_seeds=n_seeds), "full", n_boot=300, seed=k)["arms"]["x"]
            hits_boot += r["area_diff"]["lo"] <= 0.05 <= r["area_diff"]["hi"]
            hits_t += r["area_diff_t"]["lo"] <= 0.05 <= r["area_diff_t"]["hi"]
        cover[n_seeds] = (hits_boot / 60, hits_t / 60)
    assert cover[10][0] >= 0.85
    assert cover[3][0] < cover[3][1] and cover[3][1] >= 0.85


def test_point_estimates_match_the_scalar_definitions() -> None:
    rng = np.random.default_rng(2)
    panel = synthetic(rng, 0.03)
    acc = panel.accuracy()
    for kw in ({}, {"method": "window", "window": 2}, {"method": "none"}):
        r = bootstrap(panel, "full", n_boot=50, smooth_kw=kw)["arms"]["x"]
        ref = acceleration(STEPS, acc[0].mean(0), STEPS, acc[1].mean(0), **kw)
        assert r["accel"]["value"] == ref["ratio"] and r["accel"]["never"] == (not ref["reached"])
    auc = area(acc, STEPS)
    r = bootstrap(panel, "full", n_boot=50)["arms"]["x"]
    assert r["area_diff"]["value"] == pytest.approx(auc[1].mean() - auc[0].mean())
    # accuracy = mean over the two sets of each set's mean
    half = panel.values.shape[-1] // 2
    by_set = (panel.values[..., :half].mean(-1) + panel.values[..., half:].mean(-1)) / 2
    np.testing.assert_allclose(acc, by_set)


def test_seeds_only_matches_scipy_bootstrap() -> None:
    """Without per-item results the scheme is a paired percentile bootstrap over seeds: the same
    interval as scipy.stats.bootstrap(paired=True, method='percentile') up to Monte Carlo error."""
    rng = np.random.default_rng(3)
    acc = synthetic(rng, 0.04, n_seeds=8).accuracy()
    panel = Panel(arms=["full", "x"], seeds=list(range(8)), steps=STEPS, values=acc[..., None],
                  strata=np.zeros(1, dtype=np.int64), items=False)
    mine = bootstrap(panel, "full", n_boot=20000, seed=4)
    assert mine["resampled"] == "seeds only"
    auc = area(acc, STEPS)
    ref = sps.bootstrap((auc[1], auc[0]), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
                        paired=True, vectorized=True, method="percentile", n_resamples=20000,
                        random_state=np.random.default_rng(5)).confidence_interval
    r = mine["arms"]["x"]["area_diff"]
    width = ref.high - ref.low
    assert abs(r["lo"] - ref.low) < 0.05 * width and abs(r["hi"] - ref.high) < 0.05 * width


def test_probability_of_improvement_by_hand() -> None:
    """Constant curves: the arm beats full on seeds 0 and 1, ties on seed 2 -> (1 + 1 + 1/2) / 3."""
    full = np.array([0.4, 0.5, 0.6])
    arm = np.array([0.5, 0.6, 0.6])
    values = np.stack([full, arm])[:, :, None, None].repeat(3, axis=2)
    panel = Panel(arms=["full", "x"], seeds=[0, 1, 2], steps=[0, 10, 20], values=values,
                  strata=np.zeros(1, dtype=np.int64), items=False)
    r = bootstrap(panel, "full", n_boot=2000)["arms"]["x"]
    assert r["poi"]["value"] == pytest.approx(2.5 / 3)
    assert r["area_diff"]["value"] == pytest.approx(0.2 / 3)
    assert r["poi"]["lo"] >= 0.5 and r["poi"]["hi"] == 1.0  # every replicate: >= one tie in three


def test_never_reaching_counts_as_below_one() -> None:
    values = np.array([[0.2, 0.4, 0.6], [0.2, 0.3, 0.35]])[:, None, :, None].repeat(2, axis=1)
    panel = Panel(arms=["full", "x"], seeds=[0, 1], steps=[0, 10, 20], values=values,
                  strata=np.zeros(1, dtype=np.int64), items=False)
    r = bootstrap(panel, "full", n_boot=200)["arms"]["x"]["accel"]
    assert r["never"] and r["value"] is None and r["share_never"] == 1.0
    assert format_ratio_ci(r) == "< 1 [< 1, < 1]; never 100%"


def test_power_analysis_textbook_values() -> None:
    # one-sample / paired t, effect size 1, n = 10, two-sided 5 %: power 0.803 (G*Power)
    assert paired_t_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-3)
    assert seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(0.5, 1.0) == 34  # d = 0.5: 34 pairs for 80 %
    # large effects with few seeds: scipy's nct.cdf gives nan deep in the tail; the power must
    # stay a number and the seeds needed must fall as the effect grows (it once read 7 here)
    powers = [paired_t_power(0.05, 0.0101, n) for n in range(2, 40)]
    assert all(0 <= p <= 1 for p in powers) and powers == sorted(powers)
    needed = [seeds_needed(d, 0.0101) for d in (0.005, 0.01, 0.02, 0.05, 0.1, 0.5)]
    assert needed == sorted(needed, reverse=True) and needed[3] == 3
    # a 2x faster arm on a linear curve 0 -> 1 over 0..40 has area 0.75 vs 0.5
    assert implied_area_difference([0, 10, 20, 30, 40], [0, .25, .5, .75, 1.0]) == pytest.approx(0.25)


def test_variance_components_and_power_table() -> None:
    rng = np.random.default_rng(6)
    panel = synthetic(rng, 0.03, n_seeds=30, seed_sd=0.04, noise=0.0, item_sd=0.0)
    comp = variance_components(panel, "x", "full")
    # no item noise: all of the spread is seed-to-seed, sd of u[1] - u[0] = 0.04 * sqrt(2)
    assert comp["item_sd"] == pytest.approx(0.0, abs=1e-12)
    assert comp["seed_sd"] == pytest.approx(0.04 * np.sqrt(2), rel=0.35)
    rows = power_table(comp, [0.02, 0.05])
    assert [r["items_multiplier"] for r in rows] == [1, 2, 4, 1, 2, 4]
    assert rows[0]["seeds"] > rows[3]["seeds"]  # a smaller difference needs more seeds


def test_power_analysis_of_a_pilot_panel() -> None:
    rng = np.random.default_rng(7)
    pilot = synthetic(rng, 0.02, n_seeds=3)
    res = power_analysis(pilot, "full", deltas=(0.02,))
    assert res["implied_area_difference"] == pytest.approx(
        implied_area_difference(STEPS, pilot.accuracy()[0].mean(0)))
    rows = res["arms"]["x"]["rows"]
    assert [r["what"] for r in rows][:3] == ["2x acceleration"] * 3
    # more test items never need more seeds; the conservative sd never needs fewer
    for a, b in zip(rows[0::3], rows[1::3]):
        assert b["seeds"] is None or a["seeds"] is None or b["seeds"] <= a["seeds"]
    assert all(r["seeds_conservative"] is None or r["seeds"] is None
               or r["seeds_conservative"] >= r["seeds"] for r in rows)
