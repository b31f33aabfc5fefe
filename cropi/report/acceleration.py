"""Step-level acceleration: smoothing, first step reaching a level, seed means.

The definition: docs/concepts.md#step-level-acceleration.

Every curve is smoothed the same way before it is compared. The default is an exponential moving
average over the evaluation points in step order, ``alpha = 0.5``::

    s[0] = v[0];    s[i] = alpha * v[i] + (1 - alpha) * s[i - 1]

``method="window"`` is a trailing (causal) moving average of the last ``window`` points (fewer at
the start); ``method="none"`` leaves the values as they are. Both smoothers are causal: a smoothed
point never looks at later evaluations, so "the first step that reaches a*" is a step at which the
run could have been stopped.

Acceleration: ``a*`` is the baseline's final smoothed accuracy, ``s_base`` the first step at which
the baseline's smoothed curve reaches ``a*`` (>= with a 1e-12 tolerance), ``s_arm`` the same for
the arm; acceleration = ``s_base / s_arm``. An arm that never reaches ``a*`` gets no number: it is
reported as ``"< 1 (gap G)"`` with ``G = a* - max(smoothed arm)``. An arm that is at or above
``a*`` already at step 0 (``s_arm == 0``) has no defined ratio either (division by zero): it is
labelled ``"reached at step 0"`` with ``ratio = None``. When the baseline itself reaches ``a*`` at
step 0 and the arm later, the ratio is ``0 / s_arm = 0.0``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TOLERANCE = 1e-12
SMOOTHING_METHODS = ("ema", "window", "none")

Curve = tuple[np.ndarray, np.ndarray]  # (steps [n] int64, values [n] float64), steps increasing
CurveLike = tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]


def _as_curve(steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray) -> Curve:
    """Validate and convert a curve to (steps int64 [n], values float64 [n])."""
    s = np.asarray(steps)
    v = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or v.ndim != 1 or s.shape != v.shape:
        raise ValueError(f"steps {s.shape} and values {v.shape} must be 1-D of the same length")
    if s.size and not np.all(np.isfinite(s.astype(np.float64))):
        raise ValueError("steps must be finite")
    s = s.astype(np.int64)
    if np.unique(s).size != s.size:
        raise ValueError(f"duplicate steps in {s.tolist()}: keep one evaluation per step")
    return s, v


def describe_smoothing(method: str = "ema", alpha: float = 0.5, window: int = 3) -> str:
    """A one-line description of the smoothing, for reports."""
    if method == "ema":
        return f"exponential moving average over eval points, alpha={alpha:g}"
    if method == "window":
        return f"trailing moving average of the last {window} eval points"
    return "no smoothing"


def smooth(steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray,
           method: str = "ema", alpha: float = 0.5, window: int = 3) -> np.ndarray:
    """Smooth an evaluation curve; returns ``[n]`` float64 aligned with the *input* order.

    The points are processed in increasing step order whatever order they are given in.
    ``method``: ``"ema"`` (``alpha`` in (0, 1], weight of the newest point), ``"window"``
    (trailing mean of ``window`` >= 1 points) or ``"none"``. See the module docstring.
    """
    s, v = _as_curve(steps, values)
    if method not in SMOOTHING_METHODS:
        raise ValueError(f"unknown smoothing method {method!r}; use one of {SMOOTHING_METHODS}")
    if method == "ema" and not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if method == "window" and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    order = np.argsort(s, kind="stable")
    x = v[order]
    out = np.empty_like(x)
    if method == "none":
        out[:] = x
    elif method == "ema":
        for i, value in enumerate(x):
            out[i] = value if i == 0 else alpha * value + (1.0 - alpha) * out[i - 1]
    else:
        csum = np.concatenate([[0.0], np.cumsum(x)])
        idx = np.arange(1, x.size + 1)
        lo = np.maximum(idx - window, 0)
        out[:] = (csum[idx] - csum[lo]) / (idx - lo)
    result = np.empty_like(out)
    result[order] = out
    return result


def first_reach(steps: Sequence[int] | np.ndarray, smoothed: Sequence[float] | np.ndarray,
                threshold: float) -> int | None:
    """First step (in step order) whose smoothed value is >= ``threshold - 1e-12``; else None."""
    s, v = _as_curve(steps, smoothed)
    order = np.argsort(s, kind="stable")
    hits = np.nonzero(v[order] >= threshold - TOLERANCE)[0]
    return int(s[order][hits[0]]) if hits.size else None


def format_label(ratio: float | None, reached: bool, gap: float | None,
                 s_arm: int | None = None) -> str:
    """``"2.66x"``, ``"< 1 (gap 0.031)"`` or ``"reached at step 0"``."""
    if not reached:
        return f"< 1 (gap {gap:.3f})"
    if ratio is None and s_arm == 0:
        return "reached at step 0"
    return f"{ratio:.2f}x" if ratio is not None else "n/a"


def acceleration(base_steps: Sequence[int] | np.ndarray, base_acc: Sequence[float] | np.ndarray,
                 arm_steps: Sequence[int] | np.ndarray, arm_acc: Sequence[float] | np.ndarray,
                 **smooth_kw: Any) -> dict[str, Any]:
    """Step-level acceleration of an arm over the baseline (docs/concepts.md#step-level-acceleration).

    Both curves are smoothed with :func:`smooth` (``smooth_kw``). Returns ``a_star`` (baseline's
    final smoothed accuracy), ``s_base``, ``s_arm`` (None when never reached), ``ratio``
    (``s_base / s_arm``; None when not reached or ``s_arm == 0``), ``reached``, ``gap``
    (``a* - max smoothed arm`` when not reached, else None) and ``label``.
    """
    bs, bv = _as_curve(base_steps, base_acc)
    as_, av = _as_curve(arm_steps, arm_acc)
    if bs.size == 0 or as_.size == 0:
        raise ValueError("acceleration needs non-empty baseline and arm curves")
    b_smooth = smooth(bs, bv, **smooth_kw)
    a_smooth = smooth(as_, av, **smooth_kw)
    a_star = float(b_smooth[np.argmax(bs)])
    s_base = first_reach(bs, b_smooth, a_star)
    s_arm = first_reach(as_, a_smooth, a_star)
    reached = s_arm is not None
    gap = None if reached else float(a_star - a_smooth.max())
    ratio = None
    if reached and s_arm != 0 and s_base is not None:
        ratio = float(s_base) / float(s_arm)
    return {"a_star": a_star, "s_base": s_base, "s_arm": s_arm, "ratio": ratio,
            "reached": reached, "gap": gap, "label": format_label(ratio, reached, gap, s_arm)}


def stack_curves(curves: Sequence[CurveLike]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves on their common eval steps: (steps ``[t]``, values ``[n_seeds, t]``).

    Steps that some seed lacks are dropped (with a log line); raises if nothing is common.
    """
    if not curves:
        raise ValueError("no curves to stack")
    parsed = [_as_curve(s, v) for s, v in curves]
    common = parsed[0][0]
    for s, _ in parsed[1:]:
        common = np.intersect1d(common, s)
    if common.size == 0:
        raise ValueError("the curves have no evaluation step in common")
    dropped = sum(int(s.size - common.size) for s, _ in parsed)
    if dropped:
        log.info("seed mean: %d eval points off the %d common steps were dropped",
                 dropped, common.size)
    rows = []
    for s, v in parsed:
        order = np.argsort(s, kind="stable")
        rows.append(v[order][np.searchsorted(s[order], common)])
    return common, np.vstack(rows)


def mean_curve(curves: Sequence[CurveLike]) -> Curve:
    """Average seeds' raw curves on their common eval steps: (steps ``[t]``, mean ``[t]``)."""
    steps, values = stack_curves(curves)
    return steps, values.mean(axis=0)
