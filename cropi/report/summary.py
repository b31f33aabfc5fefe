"""Per-arm numbers of a comparison: final accuracies, acceleration (seed mean and per seed), data
per stage, time; and the report's tables built from them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cropi.report.acceleration import Curve, acceleration, mean_curve
from cropi.report.runs import TIME_EVENTS, Comparison, RunData, time_breakdown

log = logging.getLogger(__name__)

DASH = "—"
ACCEL_HEADERS = ["arm", "seeds", "final targeted (mean ± sd)", "final untargeted (mean ± sd)",
                 "step reaching a*", "acceleration", "per seed", "data per stage"]


@dataclass
class ArmSummary:
    """One arm: seeds, final raw accuracy per seed (by key), acceleration results, data/stage."""

    arm: str
    seeds: list[int | None]
    final: dict[str, list[float]]
    accel: dict[str, Any] | None = None
    per_seed: list[dict[str, Any] | None] = field(default_factory=list)
    data_per_stage: str = DASH


def seed_mean_curve(runs: list[RunData], key: str) -> Curve | None:
    """Mean of the seeds' raw ``key`` curves on their common steps; None when there is none."""
    curves = [c for c in (r.curve(key) for r in runs) if c[0].size]
    if not curves:
        return None
    try:
        return mean_curve(curves)
    except ValueError as exc:
        log.warning("cannot average the %s curves of %s: %s", key, runs[0].arm, exc)
        return None


def data_per_stage(run: RunData) -> str:
    """``n_selected/n_pool (pct)`` of the run's stages; a range when the stages differ."""
    pairs = []
    for stage in run.stages:
        stats = (stage.selection or {}).get("stats") or {}
        n_sel = stats.get("n_selected", (stage.selection or {}).get("n_selected"))
        n_pool = stats.get("n_pool")
        if isinstance(n_sel, int) and isinstance(n_pool, int) and n_pool > 0:
            pairs.append((n_sel, n_pool))
    if not pairs:
        return DASH
    texts = [f"{s}/{p} ({100.0 * s / p:.0f}%)" for s, p in pairs]
    if len(set(texts)) == 1:
        return texts[0]
    return f"{texts[0]} … {texts[-1]} ({len(pairs)} stages)"


def _accel(base: Curve | None, arm: Curve | None,
           smooth_kw: dict[str, Any]) -> dict[str, Any] | None:
    if base is None or arm is None or not base[0].size or not arm[0].size:
        return None
    return acceleration(base[0], base[1], arm[0], arm[1], **smooth_kw)


def summarize(cmp: Comparison, smooth_kw: dict[str, Any] | None = None) -> list[ArmSummary]:
    """Summaries of every arm; acceleration on the *targeted* seed-mean curves vs the baseline's
    seed-mean curve, and for each seed of the arm against the same baseline seed-mean curve."""
    smooth_kw = smooth_kw or {}
    base = seed_mean_curve(cmp.arms[cmp.baseline], "targeted") if cmp.baseline else None
    out = []
    for arm, runs in cmp.arms.items():
        final = {key: [float(c[1][-1]) for c in (r.curve(key) for r in runs) if c[0].size]
                 for key in ("targeted", "untargeted")}
        summary = ArmSummary(arm=arm, seeds=[r.seed for r in runs], final=final,
                             data_per_stage=data_per_stage(runs[0]))
        summary.accel = _accel(base, seed_mean_curve(runs, "targeted"), smooth_kw)
        summary.per_seed = [_accel(base, r.curve("targeted"), smooth_kw) for r in runs]
        out.append(summary)
    return out


def mean_sd(values: list[float]) -> str:
    """``"0.712 ± 0.010"`` (sample sd), ``"0.712"`` for one value, a dash for none."""
    if not values:
        return DASH
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def acceleration_rows(summaries: list[ArmSummary]) -> list[list[str]]:
    """Rows of the acceleration table, columns :data:`ACCEL_HEADERS`."""
    rows = []
    for s in summaries:
        acc = s.accel
        step = DASH if acc is None or acc["s_arm"] is None else str(acc["s_arm"])
        label = DASH if acc is None else acc["label"]
        per_seed = ", ".join(f"{seed}: {r['label']}" for seed, r in zip(s.seeds, s.per_seed)
                             if r is not None) if len(s.seeds) > 1 else DASH
        seeds = ", ".join(str(x) for x in s.seeds if x is not None) or str(len(s.seeds))
        rows.append([s.arm, seeds, mean_sd(s.final["targeted"]), mean_sd(s.final["untargeted"]),
                     step, label, per_seed or DASH, s.data_per_stage])
    return rows


def time_rows(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Total seconds per category (mean over seeds) for each arm: headers and rows."""
    headers = ["arm", *TIME_EVENTS, "total"]
    rows = []
    for arm, runs in cmp.arms.items():
        totals = np.zeros((len(runs), len(TIME_EVENTS)))
        for i, run in enumerate(runs):
            for per_cat in time_breakdown(run.records).values():
                totals[i] += [per_cat[c] for c in TIME_EVENTS]
        mean = totals.mean(axis=0)
        rows.append([arm, *(f"{v:.1f}" for v in mean), f"{mean.sum():.1f}"])
    return headers, rows


def format_ratio_ci(entry: Mapping[str, Any] | None) -> str:
    """``"1.50x [< 1, 3.00x]; never 12%"``: an acceleration with its interval and the share of
    replicates in which the arm never reaches a*."""
    if not entry:
        return DASH

    def one(x: float | None, never: bool = False) -> str:
        if never or x is None:
            return "< 1"
        if x == 0:
            return "< 1"
        return "step 0" if np.isinf(x) else f"{x:.2f}x"

    value = one(entry["value"], entry["never"])
    if entry["value"] is None and not entry["never"]:
        value = "n/a"
    return (f"{value} [{one(entry['lo'])}, {one(entry['hi'])}]; "
            f"never {100 * entry['share_never']:.0f}%")


def format_ci(entry: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``"+0.031 [-0.010, +0.072]"``."""
    if not entry:
        return DASH
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(entry['value'])} [{f.format(entry['lo'])}, {f.format(entry['hi'])}]"


STATS_HEADERS = ["arm", "area", "Δ area vs baseline [95 % CI]", "Δ area, paired t [95 % CI]",
                 "P(improvement) [95 % CI]", "acceleration [95 % CI]; never",
                 "interpolated step acceleration [95 % CI]; never",
                 "compute acceleration [95 % CI]; never",
                 "wall-clock acceleration [95 % CI]; never", "seconds to a*"]


def statistics_rows(boot: dict[str, Any], baseline: str) -> list[list[str]]:
    """Rows of the statistics table (:data:`STATS_HEADERS`) from :func:`cropi.report.stats.bootstrap`."""
    rows = []
    for arm, r in boot["arms"].items():
        base = arm == baseline
        seconds = r.get("reach_seconds")
        rows.append([arm, format_ci(r["area"]),
                     DASH if base else format_ci(r["area_diff"], signed=True),
                     DASH if base or "area_diff_t" not in r else format_ci(r["area_diff_t"], signed=True),
                     DASH if base else format_ci(r["poi"]),
                     DASH if base else format_ratio_ci(r.get("accel")),
                     *(DASH if base or key not in r else format_ratio_ci(r[key])
                       for key in ("accel_interp", "compute_accel", "wall_accel")),
                     DASH if seconds is None else f"{seconds:.0f}"])
    return rows


PAIR_HEADERS = ["arm", "other arm", "Δ targeted area, paired t [95 % CI]", "Δ final untargeted, paired t [95 % CI]"]


def pairwise_rows(boot: dict[str, Any], baseline: str) -> list[list[str]]:
    """Rows of :data:`PAIR_HEADERS`: every two arms once, from the ``area_diff_t_vs`` of
    :func:`cropi.report.stats.bootstrap`; first each arm against ``baseline`` (with the
    untargeted final difference, ``untargeted_final_diff_t``), then the other arms' pairs."""
    others = [a for a in boot["arms"] if a != baseline]
    untargeted = boot.get("untargeted_final_diff_t") or {}
    pairs = [(a, baseline) for a in others] + [(a, b) for i, a in enumerate(others) for b in others[i + 1:]]
    rows = []
    for first, second in pairs:
        d = (boot["arms"][first].get("area_diff_t_vs") or {}).get(second)
        if d is None:
            continue
        u = untargeted.get(first) if second == baseline else None
        rows.append([first, second, format_ci(d, signed=True), DASH if u is None else format_ci(u, signed=True)])
    return rows


def format_rows(cmp: Comparison) -> list[list[str]] | None:
    """Format vs skill: per arm, the targeted accuracy and the share of completions that state the
    final answer in the strict form the prompt asks for (``eval`` events' ``targeted_format``), at
    the first and the last evaluation (seed means); then the test sets' majority-answer baseline
    and the final modal-answer share (``targeted_majority``, ``targeted_modal_share``; a dash for
    runs from before they were logged). None when no eval event has the strict share."""
    rows, seen = [], False
    for arm, runs in cmp.arms.items():
        curves = {key: runs_curve(runs, f"targeted{key}") for key in ("", "_format", "_majority", "_modal_share")}
        seen = seen or curves["_format"] is not None
        cells = [arm]
        for index in (0, -1):
            cells += [DASH if curves[key] is None else f"{curves[key][1][index]:.3f}" for key in ("", "_format")]
        cells += [DASH if curves[key] is None else f"{curves[key][1][-1]:.3f}" for key in ("_majority", "_modal_share")]
        rows.append(cells)
    return rows if seen else None


FORMAT_HEADERS = ["arm", "first targeted accuracy", "first strict-format share",
                  "final targeted accuracy", "final strict-format share", "majority-answer baseline",
                  "final modal-answer share"]


def runs_curve(runs: list[RunData], key: str) -> Curve | None:
    """:func:`seed_mean_curve` without the log line when no run has ``key``."""
    if not any(r.curve(key)[0].size for r in runs):
        return None
    return seed_mean_curve(runs, key)
