"""Interval estimates for a comparison: a hierarchical bootstrap over seeds and test items.

Why: with a few seeds and test sets of tens of items, one arm's seeds end further apart than the
arms do (docs/acceleration.md), so point estimates cannot rank arms. The method follows Agarwal et
al. 2021, *Deep RL at the Edge of the Statistical Precipice* (interval estimates, stratified
bootstrap, probability of improvement) and Miller 2024, *Adding Error Bars to Evals* (arXiv
2411.00640: paired per-question differences, clustered errors, power analysis). The full
description, with formulas: docs/acceleration.md#statistics.

Data (:class:`Panel`): for arms a (one of them the baseline, full-data GRPO), *paired* seeds s
(the seeds every arm ran), the evaluation steps t every run has, and the targeted test items i::

    Y[a, s, t, i]   the item's reward (0/1 greedy, or the mean over samples for mean@k)
    acc[a, s, t] = sum_i w_i Y[a, s, t, i],   w_i = 1 / (n_sets * n_items of i's set)

so ``acc`` is the mean over targeted sets of each set's accuracy, the ``targeted`` number of the
``eval`` events. Without per-item results the panel has one pseudo-item per run (``acc`` itself)
and only seeds are resampled (``panel.items`` is False; the report says so).

One bootstrap replicate b:

1. draw n_seeds seed indices with replacement (the same draws for every arm: seeds stay paired);
2. draw the items again with replacement *within each targeted set* (stratified: every set keeps
   its size), the same draw for every arm (items stay paired) and every step; ``items="crossed"``
   (default) uses one item draw for all drawn seeds, because seeds and items are crossed factors
   (every seed answers the same items; Owen 2007, the "pigeonhole" bootstrap);
   ``items="nested"`` draws the items again for each drawn seed (the two-stage cluster bootstrap,
   more conservative);
3. recompute every statistic below on the replicate.

Intervals are percentile intervals of the replicates (``confidence`` 0.95 by default). They are
not BCa: with 3 seeds the seed-level jackknife that BCa needs is degenerate. Percentile intervals
of a mean over n seeds are narrower than a t interval by about sqrt((n-1)/n) and z/t(n-1), so
with 3-5 seeds they under-cover; the coverage measured on synthetic data is in the tests
(tests/report/test_stats.py) and the docs.

Statistics (per arm, against the baseline, point estimates on the data as measured):

- area: ``AUC[a, s] = trapz(acc[a, s, :], steps) / (steps[-1] - steps[0])``, the mean targeted
  accuracy over the step range (raw, not smoothed); ``area_diff[a] = mean_s AUC[a, s] -
  mean_s AUC[base, s]``: the primary metric;
- probability of improvement on a paired seed:
  ``P[a] = (1/n) sum_s ( 1[AUC[a, s] > AUC[base, s]] + 0.5 * 1[AUC[a, s] == AUC[base, s]] )``;
- step-level acceleration (docs/concepts.md#step-level-acceleration) of the seed-mean curves of the
  replicate; a replicate in which the arm never reaches a* counts as "< 1" (ratio 0 in the
  quantiles; ``share_never`` reports how often), one in which it starts at a* as +inf;
- wall-clock acceleration: the same first-reach steps, each converted to the seed-mean seconds
  of work at that step (:func:`cropi.report.runs.work_clock`): ``T_base(s_base) / T_arm(s_arm)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml
from scipy import stats as sps

from cropi.report.acceleration import SMOOTHING_METHODS, TOLERANCE
from cropi.report.runs import (Comparison, RunData, compute_clock, rollout_seconds, rollout_work,
                               stage_score_seconds, stage_score_work, work_clock)
from cropi.select import policy_fact

log = logging.getLogger(__name__)

CHUNK = 256  # replicates per vectorised block
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
ITEM_MODES = ("crossed", "nested")


@dataclass
class Panel:
    """Paired data of a comparison (see the module docstring).

    values ``[A, S, T, I]``; strata ``[I]`` int (the item's targeted set; one weight per set);
    clock ``[A, S, T]`` seconds of work at each step (NaN: unknown), or None.
    """

    arms: list[str]
    seeds: list[int]
    steps: np.ndarray
    values: np.ndarray
    strata: np.ndarray
    items: bool
    clock: np.ndarray | None = None
    compute: np.ndarray | None = None  # [A, S, T] counted work (forward-token units) at each step
    note: str = ""
    item_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)
        self.strata = np.asarray(self.strata, dtype=np.int64)
        a, s, t, i = self.values.shape
        if (a, s, t) != (len(self.arms), len(self.seeds), self.steps.size) or self.strata.shape != (i,):
            raise ValueError(f"panel shapes disagree: values {self.values.shape}, arms {len(self.arms)}, "
                             f"seeds {len(self.seeds)}, steps {self.steps.size}, strata {self.strata.shape}")
        for name in ("clock", "compute"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.float64))
                if getattr(self, name).shape != (a, s, t):
                    raise ValueError(f"{name} {getattr(self, name).shape} != {(a, s, t)}")

    def weights(self) -> np.ndarray:
        """``w_i = 1 / (n_sets * n_items of i's set)``: ``acc = Y @ w``."""
        _, inverse, counts = np.unique(self.strata, return_inverse=True, return_counts=True)
        return 1.0 / (counts.size * counts[inverse])

    def accuracy(self) -> np.ndarray:
        """``acc[a, s, t]`` as measured."""
        return self.values @ self.weights()


# --- vectorised curve statistics (the same definitions as cropi.report.acceleration) ---


def smooth_batch(values: np.ndarray, method: str = "ema", alpha: float = 0.5,
                 window: int = 3) -> np.ndarray:
    """:func:`cropi.report.acceleration.smooth` along the last axis (steps already in order)."""
    if method not in SMOOTHING_METHODS:
        raise ValueError(f"unknown smoothing method {method!r}")
    x = np.asarray(values, dtype=np.float64)
    if method == "none":
        return x.copy()
    out = np.empty_like(x)
    if method == "ema":
        out[..., 0] = x[..., 0]
        for j in range(1, x.shape[-1]):
            out[..., j] = alpha * x[..., j] + (1.0 - alpha) * out[..., j - 1]
        return out
    csum = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, axis=-1)], axis=-1)
    idx = np.arange(1, x.shape[-1] + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[..., idx] - csum[..., lo]) / (idx - lo)


def first_reach_index(smoothed: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Index of the first step with ``smoothed >= threshold - 1e-12`` along the last axis; -1 if
    never. ``threshold`` broadcasts against ``smoothed[..., 0]``."""
    hit = smoothed >= (np.asarray(threshold)[..., None] - TOLERANCE)
    first = np.argmax(hit, axis=-1)
    return np.where(hit.any(axis=-1), first, -1)


def crossing_step(smoothed: np.ndarray, steps: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """The step at which ``smoothed`` first reaches ``threshold``, linearly interpolated between the
    last evaluation below it and the first at or above it (not a grid point); ``steps[0]`` when the
    first evaluation reaches it, NaN when none does. Shapes as :func:`first_reach_index`."""
    steps = np.asarray(steps, dtype=np.float64)
    thr = np.asarray(threshold, dtype=np.float64)[..., None] - TOLERANCE
    i = first_reach_index(smoothed, np.asarray(threshold))
    j = np.maximum(i, 1)
    hi = np.take_along_axis(smoothed, j[..., None], -1)[..., 0]
    lo = np.take_along_axis(smoothed, (j - 1)[..., None], -1)[..., 0]
    frac = np.clip((thr[..., 0] - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    out = steps[j - 1] + frac * (steps[j] - steps[j - 1])
    out = np.where(i == 0, steps[0], out)
    return np.where(i < 0, np.nan, out)


def interpolated_ratio(s_base: np.ndarray, s_arm: np.ndarray, start: float) -> np.ndarray:
    """``(s_base - start) / (s_arm - start)`` of interpolated crossing steps, counted from the first
    evaluation ``start`` (beta, shared by every arm): 0 where the arm never reaches a* ("< 1"),
    +inf where it is there from the start while the baseline is not, NaN where neither needs a step."""
    num, den = np.asarray(s_base) - start, np.asarray(s_arm) - start
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, np.nan))
    return np.where(np.isnan(s_arm), 0.0, out)


def area(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Area under the curve along the last axis, normalised by the step range (trapezoid rule);
    the value itself for a single step."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.size == 1:
        return np.asarray(values, dtype=np.float64)[..., 0]
    return _trapezoid(values, steps, axis=-1) / (steps[-1] - steps[0])


def _ratios(steps: np.ndarray, i_base: np.ndarray, i_arm: np.ndarray,
            clock_base: np.ndarray | None = None, clock_arm: np.ndarray | None = None) -> np.ndarray:
    """s_base / s_arm (or clock_base[s_base] / clock_arm[s_arm]); 0 where the arm never reaches a*
    ("< 1"), +inf where it reaches it at step 0 (or time 0) while the baseline does later."""
    if clock_base is None:
        num = steps[i_base].astype(np.float64)
        den = np.where(i_arm >= 0, steps[np.maximum(i_arm, 0)], -1).astype(np.float64)
    else:
        num = np.take_along_axis(clock_base, i_base[..., None], -1)[..., 0]
        den = np.where(i_arm >= 0, np.take_along_axis(clock_arm, np.maximum(i_arm, 0)[..., None],
                                                      -1)[..., 0], -1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    out = np.where(den == 0, np.where(num > 0, np.inf, np.nan), out)  # step 0 (0/0: no ratio)
    return np.where(i_arm < 0, 0.0, out)


def _replicate_stats(curves: np.ndarray, steps: np.ndarray, base: int, smooth_kw: Mapping[str, Any],
                     clocks: np.ndarray | None, compute: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Statistics of replicates: ``curves [B, A, S, T]``; ``clocks`` (seconds) and ``compute``
    (counted work) ``[B, A, S, T]`` or None."""
    auc = area(curves, steps)  # [B, A, S]
    mean_auc = auc.mean(axis=-1)
    diff = mean_auc - mean_auc[:, base][:, None]
    wins = (auc > auc[:, base][:, None]) + 0.5 * (auc == auc[:, base][:, None])
    poi = wins.mean(axis=-1)
    mean_curve = curves.mean(axis=2)  # [B, A, T]
    sm = smooth_batch(mean_curve, **smooth_kw)
    a_star = sm[:, base, -1]  # [B]
    i_arm = first_reach_index(sm, a_star[:, None])  # [B, A]
    i_base = i_arm[:, base][:, None].repeat(sm.shape[1], axis=1)
    cross = crossing_step(sm, steps, a_star[:, None])  # [B, A]
    out = {"area": mean_auc, "area_diff": diff, "poi": poi, "accel": _ratios(steps, i_base, i_arm),
           "accel_interp": interpolated_ratio(cross[:, base][:, None], cross, float(steps[0])),
           "reach_step": cross, "never": (i_arm < 0), "mean_curve": mean_curve, "a_star": a_star,
           "gap": a_star[:, None] - sm.max(axis=-1)}
    if clocks is not None:
        mclock = clocks.mean(axis=2)  # [B, A, T]
        out["wall_accel"] = _ratios(steps, i_base, i_arm, mclock[:, base][:, None, :]
                                    .repeat(sm.shape[1], axis=1), mclock)
        out["reach_seconds"] = np.where(i_arm >= 0, np.take_along_axis(
            mclock, np.maximum(i_arm, 0)[..., None], -1)[..., 0], np.nan)
    if compute is not None:  # the compute at the interpolated crossing, interpolated likewise
        mcomp = compute.mean(axis=2)  # [B, A, T]
        at = _interp_along(mcomp, steps, cross)
        out["compute_accel"] = interpolated_ratio(at[:, base][:, None], at, 0.0)
        out["reach_compute"] = at
    return out


def _interp_along(values: np.ndarray, steps: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values [..., T]`` on ``steps`` read at ``at [...]`` (linear; NaN where ``at`` is NaN)."""
    flat_v = values.reshape(-1, values.shape[-1])
    flat_at = at.reshape(-1)
    out = np.array([np.interp(x, steps, v) if np.isfinite(x) else np.nan for v, x in zip(flat_v, flat_at)])
    return out.reshape(at.shape)


def _item_weight_draws(rng: np.random.Generator, strata: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Item weights ``shape + [I]``: a stratified resample of the items (within each set, with
    replacement, the set's size kept), as counts / (n_sets * n_items of the set)."""
    groups = [np.flatnonzero(strata == k) for k in np.unique(strata)]
    w = np.zeros(shape + (strata.size,))
    for members in groups:
        n = members.size
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=shape)
        w[..., members] = counts / (len(groups) * n)
    return w


def bootstrap(panel: Panel, baseline: str, n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95, items: str = "crossed",
              smooth_kw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hierarchical bootstrap of the module docstring. Returns ``{"arms": {arm: {...}},
    "n_boot", "confidence", "items", "resampled"}``; per arm: ``area``, ``area_diff``, ``poi``,
    ``accel``, ``accel_interp``, ``wall_accel`` (when the panel has clocks), ``compute_accel`` (when
    it has counted work), each ``{"value", "lo", "hi"}`` (the accelerations also ``never`` and
    ``share_never``), ``area_diff_t`` (paired t over seeds, arms other than the baseline),
    ``area_diff_t_vs`` (the same against every other arm: ``{other: {...}}``),
    ``reach_step``, and ``band`` (``steps``, ``mean``, ``lo``, ``hi``) for the figure."""
    if items not in ITEM_MODES:
        raise ValueError(f"items must be one of {ITEM_MODES}, got {items!r}")
    if baseline not in panel.arms:
        raise ValueError(f"baseline {baseline!r} is not an arm of the panel ({panel.arms})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    smooth_kw = dict(smooth_kw or {})
    base = panel.arms.index(baseline)
    _, S, _, I = panel.values.shape
    rng = np.random.default_rng(seed)
    point = _replicate_stats(panel.accuracy()[None], panel.steps, base, smooth_kw,
                             None if panel.clock is None else panel.clock[None],
                             None if panel.compute is None else panel.compute[None])
    resample_items = bool(panel.items) and I > 1
    rep = _replicates(panel, base, smooth_kw, n_boot, rng, resample_items, items)
    result = {arm: _arm_summary(panel, a, base, point, rep, confidence) for a, arm in enumerate(panel.arms)}
    return {"arms": result, "n_boot": n_boot, "confidence": confidence, "items": items,
            "resampled": "seeds and items" if resample_items else "seeds only",
            "n_seeds": S, "n_items": I if panel.items else 0, "note": panel.note,
            "a_star": float(point["a_star"][0])}


def _replicates(panel: Panel, base: int, smooth_kw: dict[str, Any], n_boot: int, rng: np.random.Generator,
                resample_items: bool, items: str) -> dict[str, np.ndarray]:
    """``{stat: [n_boot, A, ...]}``: the statistics of :func:`_replicate_stats` on ``n_boot``
    hierarchical resamples (seeds drawn with replacement; items reweighted per :data:`ITEM_MODES`
    when ``resample_items``), drawn in chunks of :data:`CHUNK`."""
    S = panel.values.shape[1]
    w0 = panel.weights()
    reps: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_boot, CHUNK):
        b = min(CHUNK, n_boot - start)
        idx = rng.integers(0, S, size=(b, S))  # [b, S] drawn seeds
        if not resample_items:
            acc = panel.values @ w0  # [A, S, T]
            curves = np.moveaxis(acc[:, idx], 1, 0)  # [b, A, S, T]
        elif items == "crossed":
            w = _item_weight_draws(rng, panel.strata, (b,))  # [b, I]
            z = np.einsum("asti,bi->bast", panel.values, w)  # [b, A, S, T]
            curves = np.take_along_axis(z, idx[:, None, :, None], axis=2)
        else:
            w = _item_weight_draws(rng, panel.strata, (b, S))  # [b, S, I]
            curves = np.einsum("absti,bsi->bast", panel.values[:, idx], w)
        clocks = None if panel.clock is None else np.moveaxis(panel.clock[:, idx], 1, 0)
        compute = None if panel.compute is None else np.moveaxis(panel.compute[:, idx], 1, 0)
        for key, value in _replicate_stats(curves, panel.steps, base, smooth_kw, clocks, compute).items():
            reps.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in reps.items()}


def paired_t(d: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """The mean of paired differences ``d`` (one per seed) with its t interval; where the
    differences do not spread, the interval is the point."""
    d = np.asarray(d, dtype=np.float64)
    if d.size < 2:
        raise ValueError(f"a paired t interval needs at least 2 differences, got {d.size}")
    if np.ptp(d) == 0:
        low = high = float(d[0])
    else:
        ci = sps.ttest_1samp(d, 0.0).confidence_interval(confidence)
        low, high = float(ci.low), float(ci.high)
    return {"value": float(d.mean()), "lo": low, "hi": high}


def final_diff_t(panel: Panel, baseline: str, confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Per arm other than ``baseline``: its accuracy at the panel's last step minus the
    baseline's, paired by seed, with the t interval (:func:`paired_t`); e.g. the untargeted
    sets, evaluated only at stage ends, where an area would rest on few points."""
    if panel.values.shape[1] < 2:
        return {}
    last = panel.accuracy()[:, :, -1]  # [A, S]
    base = panel.arms.index(baseline)
    return {arm: paired_t(last[a] - last[base], confidence) for a, arm in enumerate(panel.arms) if a != base}


def _arm_summary(panel: Panel, a: int, base: int, point: dict[str, np.ndarray], rep: dict[str, np.ndarray],
                 confidence: float) -> dict[str, Any]:
    """Arm ``a``'s entry of :func:`bootstrap`: point values (``point``) with percentile intervals
    from the replicates (``rep``), and the paired t interval of its area difference."""
    q = (1 - confidence) / 2
    S = panel.values.shape[1]
    r: dict[str, Any] = {}
    for key in ("area", "area_diff", "poi"):
        lo, hi = np.quantile(rep[key][:, a], [q, 1 - q])
        r[key] = {"value": float(point[key][0, a]), "lo": float(lo), "hi": float(hi)}
    for key in ("accel", "wall_accel", "accel_interp", "compute_accel"):
        if key not in rep:
            continue
        x = rep[key][:, a]
        x = x[~np.isnan(x)]
        never = bool(point["never"][0, a])
        r[key] = {"value": None if never else _finite_or_none(point[key][0, a]),
                  "never": never,
                  "lo": float(np.quantile(x, q, method="lower")) if x.size else None,
                  "hi": float(np.quantile(x, 1 - q, method="higher")) if x.size else None,
                  "share_never": float(rep["never"][:, a].mean())}
    mean = rep["mean_curve"][:, a]
    lo, hi = np.quantile(mean, [q, 1 - q], axis=0)
    r["band"] = {"steps": panel.steps.tolist(), "mean": point["mean_curve"][0, a].tolist(),
                 "lo": lo.tolist(), "hi": hi.tolist()}
    if S > 1:
        areas = area(panel.accuracy(), panel.steps)  # [A, S]
        if a != base:
            r["area_diff_t"] = paired_t(areas[a] - areas[base], confidence)
        r["area_diff_t_vs"] = {arm: paired_t(areas[a] - areas[b], confidence)
                               for b, arm in enumerate(panel.arms) if b != a}
    if "reach_seconds" in point:
        r["reach_seconds"] = _finite_or_none(point["reach_seconds"][0, a])
    if "reach_compute" in point:
        r["reach_compute"] = _finite_or_none(point["reach_compute"][0, a])
    steps_at = rep["reach_step"][:, a]
    steps_at = steps_at[np.isfinite(steps_at)]
    r["reach_step"] = {"value": _finite_or_none(point["reach_step"][0, a]),
                       "lo": float(np.quantile(steps_at, q)) if steps_at.size else None,
                       "hi": float(np.quantile(steps_at, 1 - q)) if steps_at.size else None}
    return r


def comparison_panel(cmp: Comparison, key: str = "targeted") -> Panel | None:
    """The paired :class:`Panel` of a comparison's ``key`` accuracy: the seeds every arm ran, the
    steps every run evaluated, and per-item results when every run has them for those steps
    (otherwise one pseudo-item per run, seeds only, said in ``note``). The clock is
    :func:`cropi.report.runs.work_clock` with beta's rollouts charged to the arms whose policy uses
    them (the policy's ``rollout_sets``: pool pass rates, target gradients) and stage 0's scoring charged to every influence
    run. None without a baseline or a common seed/step."""
    if cmp.baseline is None or cmp.single_run:
        return None
    arms = [cmp.baseline] + [a for a in cmp.arms if a != cmp.baseline]
    last = {r.path: int(r.curve(key)[0].max()) for runs in cmp.arms.values() for r in runs
            if r.curve(key)[0].size}
    final = cmp.meta.get("steps") if isinstance(cmp.meta.get("steps"), int) else None
    final = final if final is not None else max(last.values(), default=0)
    notes = []
    unfinished = sorted(f"{r.arm} seed {r.seed}" for runs in cmp.arms.values() for r in runs
                        if last.get(r.path, -1) < final)
    if unfinished:
        notes.append(f"runs not evaluated at step {final} yet are left out ({', '.join(unfinished)})")
    by_seed = {a: {r.seed: r for r in cmp.arms[a] if r.seed is not None and last.get(r.path, -1) >= final}
               for a in arms}
    alone = [a for a in arms[1:] if not set(by_seed[a]) & set(by_seed[arms[0]])]
    if alone:
        notes.append(f"arms without a seed in common with {arms[0]} are left out ({', '.join(alone)})")
        arms = [a for a in arms if a not in alone]
    seeds = sorted(set.intersection(*(set(by_seed[a]) for a in arms)))
    if not seeds:
        log.warning("no finished seed was run by every arm: no paired statistics")
        return None
    runs = [[by_seed[a][s] for s in seeds] for a in arms]
    curves = [[r.curve(key) for r in row] for row in runs]
    steps = curves[0][0][0]
    for row in curves:
        for st, _ in row:
            steps = np.intersect1d(steps, st)
    if steps.size == 0:
        log.warning("the runs have no evaluation step in common: no paired statistics")
        return None
    dropped = [a for a in arms if set(by_seed[a]) - set(seeds)]
    if dropped:
        notes.append(f"seeds not run by every arm are left out ({', '.join(dropped)})")
    acc = np.array([[v[np.searchsorted(st, steps)] for st, v in row] for row in curves])
    values, strata, items, item_ids = _item_values(runs, steps, key == "targeted", acc, notes)
    clock, compute = _clocks(cmp, runs, steps, notes)
    return Panel(arms=arms, seeds=seeds, steps=steps, values=values, strata=strata,
                 items=items, clock=clock, compute=compute, note="; ".join(notes), item_ids=item_ids)


def _item_values(runs: list[list[RunData]], steps: np.ndarray, targeted: bool, acc: np.ndarray,
                 notes: list[str]) -> tuple[np.ndarray, np.ndarray, bool, list[str]]:
    maps = [[r.item_rewards(targeted) for r in row] for row in runs]
    missing = [f"{r.arm} seed {r.seed}" for row, mrow in zip(runs, maps) for r, m in zip(row, mrow)
               if any(int(t) not in m for t in steps)]
    fallback = (acc[..., None], np.zeros(1, dtype=np.int64), False, [])
    if missing:
        notes.append("per-item results missing for " + ", ".join(missing[:4])
                     + (" ..." if len(missing) > 4 else "") + ": seeds only are resampled")
        return fallback
    common = None
    for mrow in maps:
        for m in mrow:
            for t in steps:
                keys = set(m[int(t)])
                common = keys if common is None else common & keys
    if not common:
        notes.append("the runs share no test item: seeds only are resampled")
        return fallback
    keys = sorted(common)
    sets = sorted({s for s, _ in keys})
    strata = np.array([sets.index(s) for s, _ in keys], dtype=np.int64)
    values = np.array([[[[m[int(t)][k] for k in keys] for t in steps] for m in mrow] for mrow in maps])
    panel_acc = values @ Panel(arms=["x"], seeds=[0], steps=[0], values=np.zeros((1, 1, 1, len(keys))),
                               strata=strata, items=True).weights()
    if np.nanmax(np.abs(panel_acc - acc)) > 1e-6:
        notes.append("per-item accuracies differ from the eval events (items not shared by every "
                     f"run were dropped; max difference {np.nanmax(np.abs(panel_acc - acc)):.3f})")
    return values, strata, True, [f"{s}/{i}" for s, i in keys]


def _clocks(cmp: Comparison, runs: list[list[RunData]], steps: np.ndarray,
            notes: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Seconds and counted work (:data:`cropi.report.runs.WORK_UNITS`) of every run at each step,
    beta's rollouts charged to the runs whose policy reads them (the comparison's shared draw or
    the run's seed's own draw) and stage-0 scoring to every run that scores."""
    path = cmp.path / "config.yaml"
    cfg = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None) or {}
    rollout = cfg.get("rollout") if isinstance(cfg.get("rollout"), dict) else {}
    k = {"pool": int(rollout.get("k_pool", 1)), "targets": int(rollout.get("k_target", 1))} \
        if rollout else None
    scoring = [r for row in runs for r in row if policy_fact(r.policy or "", "needs_scores")]
    floor = max((stage_score_seconds(r.records).get(0, 0.0) for r in scoring), default=0.0)
    floor_work = max((stage_score_work(r.records).get(0, 0.0) for r in scoring), default=0.0)
    out = np.full((len(runs), len(runs[0]), steps.size), np.nan)
    comp = np.full_like(out, np.nan)
    for a, row in enumerate(runs):
        for s, run in enumerate(row):
            sets = policy_fact(run.policy or "", "rollout_sets")
            shared = cmp.records + cmp.seed_records.get(run.seed, []) + run.records
            scores = policy_fact(run.policy or "", "needs_scores")
            clock = work_clock(run.records, rollout_seconds(shared, sets, k), {0: floor} if scores else None)
            out[a, s] = [clock.get(int(t), np.nan) for t in steps]
            work = compute_clock(run.records, rollout_work(shared, sets), {0: floor_work} if scores else None)
            if work is not None:
                comp[a, s] = [work.get(int(t), np.nan) for t in steps]
    if np.isnan(out).any():
        notes.append("no wall-clock axis: some runs lack train/score timings")
        out = None
    if np.isnan(comp).any():
        notes.append("no compute axis: some runs lack counted work (made before it was logged)")
        comp = None
    return out, comp


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x
