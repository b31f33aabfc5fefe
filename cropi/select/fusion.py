"""Fusion of several targets' influence scores into one ranking, computed at selection time.

numpy only. The per-target scores (one array per target set, NaN for prompts without a gradient)
are stored by scoring; the fused score depends on the budget of the selection being made, so it is
computed here, from those scores, for that budget.

- ``rrf`` (the authors' fusion): for each target take its top ``n_select`` prompts by score;
  ``fused(s) = sum over targets whose top list holds s of 1 / rank`` (rank 1 = best); prompts in
  no top list get 0.
- ``max`` / ``mean``: the max / mean of the targets' scores.

Ties: every ordering sorts descending and breaks ties by pool position (earlier first), so results
never depend on the platform's sort.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cropi.utils.errors import CropiError

FUSIONS = ("rrf", "max", "mean")


def order_desc(values: np.ndarray) -> np.ndarray:
    """Positions of the finite entries of ``values [n]``, best first; ties: earlier position first."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(values))
    return finite[np.argsort(-values[finite], kind="stable")]


def _stack(scores: Mapping[str, np.ndarray]) -> np.ndarray:
    if not scores:
        raise CropiError("no target scores to fuse", fix="configure at least one target set")
    return np.stack([np.asarray(s, dtype=np.float64) for s in scores.values()])  # [m, n]


def fuse(scores: Mapping[str, np.ndarray], n_select: int, method: str = "rrf") -> np.ndarray:
    """Fused score ``[n]`` of ``{target: [n]}`` for a selection of ``n_select`` prompts.

    A row that is NaN for any target is NaN in the fused score (zero-gradient rows are NaN for all).
    """
    if method not in FUSIONS:
        raise CropiError(f"unknown fusion {method!r}", field="score.fusion", fix="use rrf, max or mean")
    stacked = _stack(scores)
    nan_rows = np.isnan(stacked).any(axis=0)
    if method == "max":
        fused = stacked.max(axis=0)
    elif method == "mean":
        fused = stacked.mean(axis=0)
    else:
        if n_select < 1:
            raise CropiError(f"n_select must be >= 1, got {n_select}", field="select.ratio")
        fused = np.zeros(stacked.shape[1], dtype=np.float64)
        for row in stacked:
            top = order_desc(np.where(nan_rows, np.nan, row))[:n_select]
            fused[top] += 1.0 / np.arange(1, top.size + 1)
    fused[nan_rows] = np.nan
    return fused


def rank_order(scores: Mapping[str, np.ndarray], n_select: int, method: str = "rrf") -> np.ndarray:
    """Every prompt with a finite fused score, best first: the full ranking of one selection.

    Primary key: the fused score for budget ``n_select`` (its first ``n_select`` entries are the
    selection). With ``rrf``, prompts outside every target's top list all have fused score 0; they
    are ordered by the secondary key, the reciprocal-rank sum over each target's *full* ranking
    (``fuse(scores, n, "rrf")``), so a printed ranking never puts a prompt below one that every
    target ranks lower. Last key: pool position (earlier first).
    """
    fused = fuse(scores, n_select, method)
    finite = np.flatnonzero(np.isfinite(fused))
    n = fused.shape[0]
    secondary = fuse(scores, max(n, 1), "rrf") if method == "rrf" else np.zeros(n)
    order = np.lexsort((finite, -secondary[finite], -fused[finite]))
    return finite[order]
