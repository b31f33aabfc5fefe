"""Power analysis for a comparison of training arms: how many paired seeds (and how large test
sets) are needed to see a given difference (Miller 2024, *Adding Error Bars to Evals*, arXiv
2411.00640, on power; a two-sided paired t test across seeds, noncentral t).

The per-seed difference of an arm's area to the baseline's has variance
``seed_sd**2 + item_sd**2 / n_items`` (seed-to-seed and test-item components, estimated from a
pilot's :class:`cropi.report.stats.Panel`); docs/acceleration.md#statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from cropi.report.stats import Panel, area

def paired_t_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t test with ``n`` seeds to detect a mean difference ``delta``
    when the per-seed differences have standard deviation ``sd`` (noncentral t)."""
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if delta != 0 else alpha
    df = n - 1
    crit = sps.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) / sd * np.sqrt(n)
    # P(T > crit) + P(T < -crit) with T ~ nct(df, nc); the lower tail as the upper tail of
    # nct(df, -nc) (symmetry): scipy's nct.cdf returns nan far out in the tail for large nc
    return float(min(sps.nct.sf(crit, df, nc) + sps.nct.sf(crit, df, -nc), 1.0))


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05,
                 max_seeds: int = 1000) -> int | None:
    """Fewest paired seeds (>= 2) for :func:`paired_t_power` >= ``power``; None beyond ``max_seeds``."""
    for n in range(2, max_seeds + 1):
        if paired_t_power(delta, sd, n, alpha) >= power:
            return n
    return None


def difference_sd(seed_sd: float, item_sd: float, n_items: int) -> float:
    """Standard deviation of one seed's area difference with ``n_items`` test items:
    ``sqrt(seed_sd^2 + item_sd^2 / n_items)`` (seed-to-seed variance of the true difference plus
    the item sampling variance of a paired per-item difference; Miller 2024, eq. for paired SE)."""
    return float(np.sqrt(seed_sd**2 + item_sd**2 / max(n_items, 1)))


def variance_components(panel: Panel, arm: str, baseline: str) -> dict[str, float]:
    """Measured noise of the area difference arm - baseline, per seed.

    ``total_sd``: sample sd (ddof 1) over seeds of ``d_s = AUC[arm, s] - AUC[base, s]``;
    ``item_sd``: the sd over items of the per-item area difference ``delta_i`` pooled over seeds
    (``Var(d_s | seed) ~ item_sd^2 / n_items``; with several sets, weighted like the accuracy:
    ``item_sd^2 / n_items = sum_i w_i^2 var_i`` is kept exact by reporting ``n_items_eff``);
    ``seed_sd``: ``sqrt(max(total_sd^2 - item_var_of_mean, 0))``, the seed-to-seed part.
    """
    a, b = panel.arms.index(arm), panel.arms.index(baseline)
    diff_items = _item_area(panel.values[a] - panel.values[b], panel.steps)  # [S, I]
    w = panel.weights()
    d = diff_items @ w  # [S]
    S = d.size
    total_sd = float(np.std(d, ddof=1)) if S > 1 else float("nan")
    out = {"n_seeds": S, "mean_diff": float(d.mean()), "total_sd": total_sd}
    if panel.items and panel.values.shape[-1] > 1:
        # variance of the weighted mean over items, per seed, then averaged over seeds
        var_i = diff_items.var(axis=1, ddof=1)  # [S] (items treated as exchangeable)
        n_eff = 1.0 / float(np.sum(w**2))
        item_var_of_mean = float(var_i.mean() / n_eff)
        out.update({"item_sd": float(np.sqrt(var_i.mean())), "n_items_eff": n_eff,
                    "item_var_of_mean": item_var_of_mean})
        seed_var = max(total_sd**2 - item_var_of_mean, 0.0) if S > 1 else float("nan")
        out["seed_sd"] = float(np.sqrt(seed_var)) if S > 1 else float("nan")
    else:
        out.update({"item_sd": float("nan"), "n_items_eff": float("nan"),
                    "item_var_of_mean": float("nan"), "seed_sd": total_sd})
    return out


def _item_area(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Area along the step axis of ``values [S, T, I]``: ``[S, I]``."""
    return area(np.moveaxis(values, -1, -2), steps)


def implied_area_difference(steps: Sequence[int] | np.ndarray, base_curve: Sequence[float] | np.ndarray,
                            factor: float = 2.0) -> float:
    """The area difference an arm ``factor`` times faster than the baseline would have: the arm's
    curve is the baseline's at ``factor * t`` (held at its last value past the end), so
    ``delta = area(base(factor t)) - area(base(t))`` over the same step range."""
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(base_curve, dtype=np.float64)
    fast = np.interp(np.minimum(factor * s, s[-1]), s, v)
    return float(area(fast, s) - area(v, s))


def power_table(components: Mapping[str, float], deltas: Sequence[float],
                item_multipliers: Sequence[float] = (1, 2, 4), power: float = 0.8,
                alpha: float = 0.05) -> list[dict[str, Any]]:
    """Seeds needed (paired t test, ``power``, two-sided ``alpha``) for each area difference in
    ``deltas`` and each test-set size ``n_items_eff * m`` (m in ``item_multipliers``), from
    :func:`variance_components`. Without item-level components only the measured size is listed."""
    seed_sd, item_sd, n_eff = (components.get("seed_sd", float("nan")),
                               components.get("item_sd", float("nan")),
                               components.get("n_items_eff", float("nan")))
    rows = []
    mults = item_multipliers if np.isfinite(item_sd) else (1,)
    for delta in deltas:
        for m in mults:
            if np.isfinite(item_sd):
                sd = difference_sd(seed_sd, item_sd, int(round(n_eff * m)))
            else:
                sd = components.get("total_sd", float("nan"))
            n = seeds_needed(delta, sd, power, alpha) if np.isfinite(sd) else None
            rows.append({"delta": float(delta), "items_multiplier": m,
                         "n_items_eff": None if not np.isfinite(n_eff) else n_eff * m,
                         "sd": float(sd), "seeds": n})
    return rows


def power_analysis(panel: Panel, baseline: str, deltas: Sequence[float] = (0.01, 0.02, 0.05),
                   factor: float = 2.0, power: float = 0.8, alpha: float = 0.05,
                   item_multipliers: Sequence[float] = (1, 2, 4)) -> dict[str, Any]:
    """Seeds needed per arm, from a pilot panel: the area difference a ``factor``-times faster arm
    would have on the baseline's measured seed-mean curve (:func:`implied_area_difference`) and
    the differences in ``deltas``, for test sets ``item_multipliers`` times as large.

    The seed-to-seed sd measured on a few pilot seeds is itself uncertain: ``seeds_conservative``
    uses its one-sided 80 % upper bound ``sd * sqrt((n-1) / chi2_0.2(n-1))``.
    """
    base = panel.arms.index(baseline)
    curve = panel.accuracy()[base].mean(axis=0)
    implied = implied_area_difference(panel.steps, curve, factor) if panel.steps.size > 1 else 0.0
    out: dict[str, Any] = {"factor": factor, "implied_area_difference": implied, "power": power,
                           "alpha": alpha, "n_pilot_seeds": len(panel.seeds), "arms": {}}
    targets = [implied, *deltas]
    for arm in panel.arms:
        if arm == baseline:
            continue
        comp = variance_components(panel, arm, baseline)
        rows = power_table(comp, targets, item_multipliers, power, alpha)
        n = comp["n_seeds"]
        if n > 1 and np.isfinite(comp.get("seed_sd", np.nan)):
            inflate = float(np.sqrt((n - 1) / sps.chi2.ppf(0.2, n - 1)))
            upper = {**comp, "seed_sd": comp["seed_sd"] * inflate, "total_sd": comp["total_sd"] * inflate}
            for row, hi in zip(rows, power_table(upper, targets, item_multipliers, power, alpha),
                               strict=True):
                row["seeds_conservative"] = hi["seeds"]
        per_target = len(rows) // len(targets)
        for i, row in enumerate(rows):
            row["what"] = f"{factor:g}x acceleration" if i < per_target else "area difference"
        out["arms"][arm] = {"components": comp, "rows": rows}
    return out
