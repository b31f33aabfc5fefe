"""Statistics of a selection, and the ``selection.json`` file.

All statistics are plain JSON values (dicts of str -> int/float/list), ready for selection.json,
metrics.jsonl and the report.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cropi import __version__
from cropi.select.analysis import PromptMeasures, ordinal_levels, selection_analysis
from cropi.select.policies import SelectionContext
from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PASS_RATE_BINS = 10
SCORE_BINS = 20
NO_LEVEL = "none"  # key of prompts without a level in the level mix (JSON keys are strings)


def _positions(ctx: SelectionContext, ids: Sequence[str], what: str) -> np.ndarray:
    index = {id_: i for i, id_ in enumerate(ctx.ids)}
    missing = [i for i in ids if i not in index]
    if missing:
        raise CropiError(f"{len(missing)} {what} ids are not in the pool (e.g. {missing[:3]})")
    pos = np.array([index[i] for i in ids], dtype=np.int64)
    if np.unique(pos).size != pos.size:
        raise CropiError(f"the {what} ids contain duplicates")
    return pos


def _mix(values: Sequence[Any], pos: np.ndarray) -> dict[str, int]:
    counts = Counter(NO_LEVEL if values[i] is None else str(values[i]) for i in pos)
    return dict(sorted(counts.items()))


def _histogram(values: np.ndarray, pos_sel: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    """Counts of the finite ``values`` of the pool and of the selected positions over ``edges``."""
    pool = values[np.isfinite(values)]
    sel = values[pos_sel]
    sel = sel[np.isfinite(sel)]
    return {
        "edges": [float(e) for e in edges],
        "pool": np.histogram(pool, bins=edges)[0].tolist(),
        "selected": np.histogram(sel, bins=edges)[0].tolist(),
    }


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def _score_stats(values: np.ndarray | None, pos: np.ndarray) -> dict[str, Any] | None:
    """Histogram (``SCORE_BINS`` bins over the pool's finite scores) and means, or None."""
    if values is None:
        return None
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    hist = _histogram(values, pos, np.linspace(lo, hi, SCORE_BINS + 1))
    return {**hist, "mean_pool": _mean(values), "mean_selected": _mean(values[pos])}


def selection_stats(ctx: SelectionContext, selected: Sequence[str],
                    previous: Sequence[str] | None = None,
                    scores: np.ndarray | None = None,
                    measures: PromptMeasures | None = None) -> dict[str, Any]:
    """Counts, family/level mix, pass-rate and score histograms, overlap with ``previous``.

    ``measures``: per-prompt measures (entropy, similarity, ...) to compare the selection with the
    prompts with a gradient and with the pool (``analysis``: :func:`cropi.select.analysis.
    selection_analysis`, seeded by ``ctx.seed``; the ordinal level is added when the pool's level
    labels have one); None: no ``analysis`` key.

    ``scores [n]``: the scores to histogram (default: the fused score for a budget of
    ``len(selected)``; NaN/inf ignored). Overlap = |selected ∩ previous| / |selected| (None without
    a previous selection). ``n_zero_grad``: pool prompts with a NaN fused score, excluded from
    influence selection (None when the pool was not scored).
    """
    pos = _positions(ctx, selected, "selected")
    all_pos = np.arange(len(ctx))
    fused = ctx.fused_scores(max(len(selected), 1))
    scores = fused if scores is None else np.asarray(scores, dtype=np.float64)
    if scores is not None and scores.shape != (len(ctx),):
        raise ValueError(f"scores {scores.shape} do not match the pool ({len(ctx)})")
    overlap = None
    if previous is not None:
        common = len(set(selected) & set(previous))
        overlap = {"n_previous": len(previous), "n_common": common,
                   "fraction": common / len(selected) if selected else 0.0}
    p = ctx.pass_rate
    analysis = None
    if measures is not None:
        if "level" not in measures.values:
            measures = PromptMeasures(dict(measures.values), dict(measures.notes))
            measures.add("level", ordinal_levels(ctx.level))
        analysis = selection_analysis(p, pos, measures, seed=ctx.seed)
    out = {
        "n_pool": len(ctx),
        "n_selected": len(selected),
        "n_zero_grad": None if fused is None else int(np.count_nonzero(np.isnan(fused))),
        "source_mix": {"pool": _mix(ctx.source, all_pos), "selected": _mix(ctx.source, pos)},
        "level_mix": {"pool": _mix(ctx.level, all_pos), "selected": _mix(ctx.level, pos)},
        "pass_rate": {**_histogram(p, pos, np.linspace(0.0, 1.0, PASS_RATE_BINS + 1)),
                      "mean_pool": _mean(p), "mean_selected": _mean(p[pos])},
        "score": _score_stats(scores, pos),
        "overlap_previous": overlap,
    }
    if analysis is not None:
        out["analysis"] = analysis
    return out


def write_selection(path: str | Path, policy: str, n: int, ids: Sequence[str],
                    stats: dict[str, Any], **spec: Any) -> None:
    """Write ``selection.json`` atomically: policy, budget ``n``, ids in order, stats, and what
    else made the selection (``spec``: e.g. ratio, fusion, scorer)."""
    atomic_write_json(path, {
        "format_version": FORMAT_VERSION,
        "cropi_version": __version__,
        "policy": policy,
        "budget": int(n),
        "n_selected": len(ids),
        "ids": [str(i) for i in ids],
        "stats": stats,
        **spec,
    })
    log.info("wrote selection of %d prompts (%s, budget %d) to %s", len(ids), policy, n, path)


def read_selection(path: str | Path) -> dict[str, Any]:
    """Read ``selection.json``: a dict with policy, budget, n_selected, ids (ordered), stats."""
    path = Path(path)
    if not path.exists():
        raise CropiError("does not exist", file=path, fix="run the selection step first")
    try:
        data = read_json(path)
    except ValueError as exc:
        raise CropiError(f"is not valid JSON ({exc})", file=path,
                         fix="delete it and rerun the selection step") from None
    for key in ("policy", "budget", "ids", "stats"):
        if not isinstance(data, dict) or key not in data:
            raise CropiError("is not a selection file", file=path, field=key,
                             fix="delete it and rerun the selection step")
    if not isinstance(data["ids"], list) or not all(isinstance(i, str) for i in data["ids"]):
        raise CropiError("must be a list of prompt ids", file=path, field="ids")
    return data
