"""Scores (method.md §5): target means, cosine scores per target, fusion of several targets.

numpy only. Zero-gradient prompts (all rewards equal) carry no signal: their scores are NaN, they
get no rank and are never selected.

Ties: every ordering here (top-N per target in RRF, the final ``rank`` column) sorts by score,
descending, and breaks ties by position in the pool (earlier row first), so results never depend on
the platform's sort.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_path

log = logging.getLogger(__name__)

FUSIONS = ("rrf", "max", "mean")
_CHUNK_ROWS = 4096


def target_mean(feats: np.ndarray, zero_mask: np.ndarray, ids: Sequence[str], max_n: int = 100,
                seed: int = 0, name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Mean projected gradient of one target set: ``(mean [k] float64, used_ids)``.

    ``feats [n, k]``, ``zero_mask [n]`` (True: zero gradient). The mean is over the prompts with a
    non-zero gradient (not in ``zero_mask`` and a non-zero row); when there are more than ``max_n``
    of them, ``max_n`` are drawn without replacement with ``np.random.default_rng(seed)`` and kept
    in their original order. ``name`` only labels error messages.
    """
    feats = np.asarray(feats)
    zero_mask = np.asarray(zero_mask, dtype=bool)
    if feats.ndim != 2 or zero_mask.shape != (feats.shape[0],) or len(ids) != feats.shape[0]:
        raise ValueError(f"target_mean: feats {feats.shape}, zero_mask {zero_mask.shape}, "
                         f"{len(ids)} ids do not agree")
    if max_n < 1:
        raise CropiError(f"max_n must be >= 1, got {max_n}", field="score.target_max")
    nonzero_rows = np.any(feats != 0, axis=1)
    valid = np.flatnonzero(~zero_mask & nonzero_rows)
    if valid.size == 0:
        label = f"target {name!r}" if name else "the target set"
        raise CropiError(
            f"{label} has no prompt with a non-zero gradient: all target rewards are equal",
            field="rollout.k_target",
            fix="increase k_target or use an easier target set",
        )
    if valid.size > max_n:
        rng = np.random.default_rng(seed)
        valid = np.sort(rng.choice(valid, size=max_n, replace=False))
    mean = feats[valid].astype(np.float64).mean(axis=0)
    return mean, [str(ids[i]) for i in valid]


def cosine_scores(pool_feats: np.ndarray, target_means: Mapping[str, np.ndarray],
                  zero_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cosine of every pool row with every target mean: ``{target: [n] float64}``.

    ``pool_feats [n, k]`` (any float dtype; computed in float64 in row chunks), ``target_means``
    ``{name: [k]}``. Rows with a zero norm, or marked in ``zero_mask [n]``, get NaN.
    """
    pool_feats = np.asarray(pool_feats)
    n, k = pool_feats.shape
    names = list(target_means)
    means = np.stack([np.asarray(target_means[t], dtype=np.float64) for t in names]) if names \
        else np.zeros((0, k))
    if means.shape != (len(names), k):
        raise ValueError(f"target means {means.shape} do not match pool features k={k}")
    mean_norms = np.linalg.norm(means, axis=1)
    for name, norm in zip(names, mean_norms):
        if not norm > 0:
            raise CropiError(f"target {name!r} has a zero (or non-finite) mean gradient",
                             fix="use more target prompts (score.target_max) or another target set")
    unit = means / mean_norms[:, None]
    out = np.empty((len(names), n), dtype=np.float64)
    for start in range(0, n, _CHUNK_ROWS):
        rows = pool_feats[start:start + _CHUNK_ROWS].astype(np.float64)
        norms = np.linalg.norm(rows, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, start:start + len(rows)] = (unit @ rows.T) / norms[None, :]
        out[:, start:start + len(rows)][:, norms == 0] = np.nan
    if zero_mask is not None:
        out[:, np.asarray(zero_mask, dtype=bool)] = np.nan
    return {name: out[i] for i, name in enumerate(names)}


def order_desc(values: np.ndarray) -> np.ndarray:
    """Positions of the finite entries of ``values [n]``, best first; ties: earlier position first."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(values))
    return finite[np.argsort(-values[finite], kind="stable")]


def fuse(scores: Mapping[str, np.ndarray], n_select: int, method: str = "rrf") -> np.ndarray:
    """Fused score ``[n]`` of several targets' scores ``{target: [n]}``.

    - ``rrf`` (method.md §5): for each target take its top ``n_select`` rows by score among the
      non-NaN ones (ties: earlier position first); ``fused(s) = sum over targets whose top list
      holds s of 1 / rank`` (rank 1 = best); rows in no top list get 0.
    - ``max`` / ``mean``: max / mean over targets.

    A row that is NaN for any target is NaN in the fused score (zero-gradient rows are NaN for all).
    """
    if method not in FUSIONS:
        raise CropiError(f"unknown fusion {method!r}", field="score.fusion", fix="use rrf, max or mean")
    if not scores:
        raise CropiError("no target scores to fuse", fix="configure at least one target set")
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in scores.values()])  # [m, n]
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


def score_table(ids: Sequence[str], scores: Mapping[str, np.ndarray], fused: np.ndarray,
                pass_rate: Sequence[float] | np.ndarray, source: Sequence[str],
                level: Sequence[str | None]) -> pa.Table:
    """One row per pool prompt: id, source, level, pass_rate, zero_grad, score_<target>..., fused,
    rank.

    ``rank`` is 1 for the best fused score (ties: earlier position first) and null for
    zero-gradient (NaN) rows; ``zero_grad`` is True where the fused score is NaN.
    """
    n = len(ids)
    fused = np.asarray(fused, dtype=np.float64)
    pass_rate = np.asarray(pass_rate, dtype=np.float64)
    lengths = {"fused": fused.shape[0], "pass_rate": pass_rate.shape[0], "source": len(source),
               "level": len(level), **{f"score_{t}": len(s) for t, s in scores.items()}}
    bad = {key: value for key, value in lengths.items() if value != n}
    if bad:
        raise ValueError(f"score_table: {n} ids but lengths {bad}")
    order = order_desc(fused)
    rank = np.zeros(n, dtype=np.int64)
    rank[order] = np.arange(1, order.size + 1)
    zero_grad = np.isnan(fused)
    columns: dict[str, pa.Array] = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "source": pa.array([str(s) for s in source], pa.string()),
        "level": pa.array([None if v is None else str(v) for v in level], pa.string()),
        "pass_rate": pa.array(pass_rate, pa.float64()),
        "zero_grad": pa.array(zero_grad, pa.bool_()),
    }
    for target, values in scores.items():
        columns[f"score_{target}"] = pa.array(np.asarray(values, dtype=np.float64), pa.float64())
    columns["fused"] = pa.array(fused, pa.float64())
    columns["rank"] = pa.array(rank, pa.int64(), mask=zero_grad)
    return pa.table(columns)


def write_scores(path: str | Path, table: pa.Table) -> None:
    """Write the score table to Parquet atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    log.info("wrote %d scores to %s", table.num_rows, path)


def read_scores(path: str | Path) -> pa.Table:
    """Read a score table written by :func:`write_scores`."""
    path = Path(path)
    if not path.exists():
        raise CropiError("does not exist", file=path, fix="run the scoring step first")
    return pq.read_table(path)
