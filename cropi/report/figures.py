"""The report's figures (matplotlib, Agg canvas, PNG), each written atomically.

No pyplot: every figure is a :class:`matplotlib.figure.Figure` saved with the Agg canvas, so
building a report never touches a display or global pyplot state. Each function returns the PNG's
path, or None when there is nothing to draw.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cropi.report.acceleration import Curve, smooth, stack_curves
from cropi.utils.io import atomic_path

log = logging.getLogger(__name__)

DPI = 100
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
POOL_COLOR, SELECTED_COLOR = "#9aa5b1", "#d62728"


def arm_color(i: int) -> str:
    """The colour of the ``i``-th arm (the same in every figure)."""
    return COLORS[i % len(COLORS)]


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    log.debug("wrote %s", path)
    return path


def accuracy_figure(path: Path, key: str, arms: Mapping[str, Sequence[Curve]],
                    smooth_kw: Mapping[str, Any], a_star: float | None = None,
                    bands: Mapping[str, Mapping[str, Any]] | None = None) -> Path | None:
    """``key`` accuracy vs step for every arm: raw (thin), smoothed (thick); with several seeds the
    raw line is the seed mean on common steps and a band spans the seeds' min..max, or, for the
    arms in ``bands`` (``steps``, ``lo``, ``hi``: :func:`cropi.report.stats.bootstrap`), the 95 %
    bootstrap interval of the seed mean."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for i, (arm, curves) in enumerate(arms.items()):
        curves = [c for c in curves if c[0].size]
        if not curves:
            continue
        steps, values = stack_curves(curves)
        mean = values.mean(axis=0)
        color = arm_color(i)
        band = (bands or {}).get(arm)
        if band is not None:
            ax.fill_between(band["steps"], band["lo"], band["hi"], color=color, alpha=0.15,
                            linewidth=0)
        elif values.shape[0] > 1:
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15,
                            linewidth=0)
        ax.plot(steps, mean, color=color, linewidth=0.8, alpha=0.5)
        seeds = f" ({values.shape[0]} seeds)" if values.shape[0] > 1 else ""
        ax.plot(steps, smooth(steps, mean, **smooth_kw), color=color, linewidth=2.4,
                label=f"{arm}{seeds}")
        drawn = True
    if not drawn:
        return None
    if a_star is not None:
        ax.axhline(a_star, color="black", linestyle="--", linewidth=0.8, label="a* (baseline)")
    ax.set_xlabel("RL step")
    ax.set_ylabel(f"{key} accuracy")
    what = "95 % bootstrap band" if bands else "band: seeds' min..max"
    ax.set_title(f"{key} accuracy (thin: raw, thick: smoothed; {what})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def wallclock_figure(path: Path, arms: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                     a_star: float | None = None, order: Sequence[str] | None = None) -> Path | None:
    """Seed-mean targeted accuracy vs seconds of work (evaluation excluded; beta's rollouts and
    scoring counted for the arms that use them): ``arms`` maps an arm to (seconds, accuracy);
    ``order``: the arms in the order that gives them their colours in the other figures."""
    if not arms:
        return None
    order = list(order) if order is not None else list(arms)
    fig = _figure()
    ax = fig.add_subplot()
    for arm in sorted(arms, key=lambda a: order.index(a) if a in order else len(order)):
        seconds, acc = arms[arm]
        color = arm_color(order.index(arm) if arm in order else len(order))
        ax.plot(seconds, acc, color=color, marker="o", markersize=3, linewidth=1.6, label=arm)
    if a_star is not None:
        ax.axhline(a_star, color="black", linestyle="--", linewidth=0.8, label="a* (baseline)")
    ax.set_xlabel("seconds of work (rollouts + scoring + training; evaluation excluded)")
    ax.set_ylabel("targeted accuracy (seed mean)")
    ax.set_title("targeted accuracy vs wall-clock work")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def steps_figure(path: Path, arms: Sequence[str], steps: Sequence[int | None],
                 labels: Sequence[str]) -> Path | None:
    """Horizontal bars: the step at which each arm's smoothed seed-mean curve reaches a*."""
    if not arms:
        return None
    fig = _figure(7.0, 0.5 * len(arms) + 1.2)
    ax = fig.add_subplot()
    reached = [s for s in steps if s is not None]
    top = max(reached, default=1) or 1
    for i, (arm, step, label) in enumerate(zip(arms, steps, labels, strict=True)):
        width = top if step is None else step
        ax.barh(i, width, color=arm_color(i), alpha=0.25 if step is None else 0.9,
                hatch="//" if step is None else None)
        ax.text(width, i, f"  {label}", va="center", fontsize=8)
    ax.set_yticks(range(len(arms)), list(arms))
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel("first step reaching a* (hatched: never)")
    ax.set_title("steps to reach the baseline's final accuracy a*")
    return save_figure(fig, path)


def _mix_panel(ax: Any, mix: Mapping[str, Mapping[str, int]], title: str) -> None:
    pool, sel = mix.get("pool") or {}, mix.get("selected") or {}
    names = sorted(set(pool) | set(sel))
    n_pool, n_sel = max(sum(pool.values()), 1), max(sum(sel.values()), 1)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [pool.get(k, 0) / n_pool for k in names], 0.4, color=POOL_COLOR, label="pool")
    ax.bar(x + 0.2, [sel.get(k, 0) / n_sel for k in names], 0.4, color=SELECTED_COLOR,
           label="selected")
    rotate = len(names) > 4
    ax.set_xticks(x, names, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  fontsize=8)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.legend(fontsize=8)


def composition_figure(path: Path, stage: int, stats: Mapping[str, Any]) -> Path | None:
    """Family (source) mix and level mix, pool vs selected, as fractions of each."""
    if not stats.get("source_mix") and not stats.get("level_mix"):
        return None
    fig = _figure(10.0, 4.0)
    _mix_panel(fig.add_subplot(1, 2, 1), stats.get("source_mix") or {}, f"stage {stage}: family")
    _mix_panel(fig.add_subplot(1, 2, 2), stats.get("level_mix") or {}, f"stage {stage}: level")
    return save_figure(fig, path)


def histogram_figure(path: Path, title: str, hist: Mapping[str, Any] | None,
                     xlabel: str) -> Path | None:
    """Pool vs selected histogram (``edges``, ``pool``, ``selected`` counts) as fractions."""
    if not hist or not hist.get("edges"):
        return None
    edges = np.asarray(hist["edges"], dtype=np.float64)
    pool = np.asarray(hist["pool"], dtype=np.float64)
    sel = np.asarray(hist["selected"], dtype=np.float64)
    widths = np.diff(edges)
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    ax.bar(edges[:-1], pool / max(pool.sum(), 1.0), widths, align="edge", color=POOL_COLOR,
           alpha=0.7, label=f"pool (mean {_fmt(hist.get('mean_pool'))})")
    ax.bar(edges[:-1], sel / max(sel.sum(), 1.0), widths, align="edge", fill=False,
           edgecolor=SELECTED_COLOR, linewidth=1.5,
           label=f"selected (mean {_fmt(hist.get('mean_selected'))})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def overlap_figure(path: Path, overlaps: Sequence[tuple[int, float]]) -> Path | None:
    """Fraction of each stage's selection already selected at the previous stage."""
    if not overlaps:
        return None
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    stages = [s for s, _ in overlaps]
    ax.bar(stages, [f for _, f in overlaps], 0.6, color=SELECTED_COLOR, alpha=0.8)
    ax.set_xlim(min(stages) - 0.75, max(stages) + 0.75)
    ax.set_ylim(0, 1.05)
    ax.set_xticks(stages)
    ax.set_xlabel("stage")
    ax.set_ylabel("|S_m ∩ S_m-1| / |S_m|")
    ax.set_title("overlap with the previous stage's selection")
    return save_figure(fig, path)


def time_figure(path: Path, breakdown: Mapping[str, Mapping[str, float]]) -> Path | None:
    """Stacked bars: seconds per stage label and category (rollouts, scoring, training, eval)."""
    if not breakdown:
        return None
    labels = list(breakdown)
    categories = list(next(iter(breakdown.values())))
    fig = _figure(max(5.0, 0.7 * len(labels) + 3.0), 3.6)
    ax = fig.add_subplot()
    bottom = np.zeros(len(labels))
    for i, cat in enumerate(categories):
        values = np.array([breakdown[lab].get(cat, 0.0) for lab in labels])
        ax.bar(labels, values, bottom=bottom, color=arm_color(i), label=cat)
        bottom += values
    ax.set_ylabel("seconds")
    ax.set_title("time breakdown")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def analysis_figure(path: Path, stage: int, measures: Mapping[str, Mapping[str, Any]]) -> Path | None:
    """What a stage's selection picks, one panel per measure (``selection.json``'s
    ``stats.analysis.measures``): the selection's mean with its 95 % bootstrap interval (red), the
    prompts with a gradient (black bar) and the 95 % range of random picks from them (grey band),
    and the whole pool (grey diamond)."""
    rows = [(name, row) for name, row in measures.items() if row.get("gradient") or row.get("pool")]
    if not rows:
        return None
    fig = _figure(7.0, 0.75 * len(rows) + 1.0)
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (name, row) in zip(axes, rows, strict=True):
        g, p = row.get("gradient"), row.get("pool")
        ref = g or p
        if g is not None:
            ax.axvspan(g["random_lo"], g["random_hi"], color=POOL_COLOR, alpha=0.35, linewidth=0,
                       label="random picks (95 %)")
            ax.axvline(g["group"], color="black", linewidth=1.2, label="with gradient")
        if p is not None:
            ax.plot([p["group"]], [0], marker="D", color=POOL_COLOR, markersize=6, linestyle="none",
                    label="pool")
        ax.errorbar([ref["selected"]], [0], xerr=[[ref["selected"] - ref["selected_lo"]],
                                                  [ref["selected_hi"] - ref["selected"]]],
                    fmt="o", color=SELECTED_COLOR, capsize=3, label="selected (95 % CI)")
        star = "" if g is None else (" *" if g["p"] < 0.05 else "")
        ax.set_yticks([0], [f"{name}{star}"], fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.15)
    axes[0].set_title(f"stage {stage}: what the selection picks (* p < 0.05 vs random picks)", fontsize=10)
    axes[-1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=4, frameon=False)
    return save_figure(fig, path)
