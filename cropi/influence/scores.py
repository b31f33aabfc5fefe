"""Scores: target means and cosine scores per target.

The formulas: docs/concepts.md#scores-fusion-and-selection.

numpy only. Zero-gradient prompts (all rewards equal) carry no signal: their scores are NaN and
they are never selected. Fusion of several targets happens at selection time, for the budget of
the selection being made (:mod:`cropi.select.fusion`).

Pools past memory: :func:`store_target_mean` and :func:`store_cosine_scores` compute the target
means and the paper's cosines from feature stores read chunk by chunk
(:meth:`cropi.influence.features.FeatureStore.chunks`), with the same numbers as
:func:`target_mean` and :func:`cosine_scores` on the whole matrix and memory independent of the
pool's size.

A score table is written atomically; :func:`read_scores` checks it against the done record of its
stage (``state.json`` beside it) and turns a file that fails to read into one line naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cropi.influence.features import FeatureStore
from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_path, damaged, record_mismatch

log = logging.getLogger(__name__)

_CHUNK_ROWS = 4096


def target_mean(feats: np.ndarray, zero_grad: np.ndarray, ids: Sequence[str], max_n: int = 100,
                seed: int = 0, name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Mean projected gradient of one target set: ``(mean [k] float64, used_ids)``.

    ``feats [n, k]``, ``zero_grad [n]`` (True: zero gradient). The mean is over the prompts with a
    non-zero gradient (not in ``zero_grad`` and a non-zero row); when there are more than ``max_n``
    of them, ``max_n`` are drawn without replacement with ``np.random.default_rng(seed)`` and kept
    in their original order. ``name`` only labels error messages.
    """
    feats = np.asarray(feats)
    zero_grad = np.asarray(zero_grad, dtype=bool)
    if feats.ndim != 2 or zero_grad.shape != (feats.shape[0],) or len(ids) != feats.shape[0]:
        raise ValueError(f"target_mean: feats {feats.shape}, zero_grad {zero_grad.shape}, "
                         f"{len(ids)} ids do not agree")
    if max_n < 1:
        raise CropiError(f"max_n must be >= 1, got {max_n}", field="score.target_max")
    nonzero_rows = np.any(feats != 0, axis=1)
    valid = np.flatnonzero(~zero_grad & nonzero_rows)
    if valid.size == 0:
        label = f"target {name!r}" if name else "the target set"
        raise CropiError(
            f"{label} has no prompt with a non-zero gradient: all target rewards are equal",
            field="rollout.k_target",
            fix="increase k_target or use an easier target set",
        )
    valid = _sample_targets(valid, max_n, seed)
    mean = feats[valid].astype(np.float64).mean(axis=0)
    return mean, [str(ids[i]) for i in valid]


def _sample_targets(valid: np.ndarray, max_n: int, seed: int) -> np.ndarray:
    if valid.size > max_n:
        rng = np.random.default_rng(seed)
        valid = np.sort(rng.choice(valid, size=max_n, replace=False))
    return valid


def store_target_mean(store: FeatureStore, max_n: int = 100, seed: int = 0, name: str | None = None
                      ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """:func:`target_mean` of a stored target set, read in chunks: ``(mean [k] float64, used_ids,
    used rows float64 [m, k])``. Two passes: which rows have a gradient, then the used rows."""
    if max_n < 1:
        raise CropiError(f"max_n must be >= 1, got {max_n}", field="score.target_max")
    nonzero = np.zeros(store.n, dtype=bool)
    zero = np.zeros(store.n, dtype=bool)
    for start, feats, z in store.chunks():
        nonzero[start:start + len(feats)] = np.any(feats != 0, axis=1)
        zero[start:start + len(feats)] = z
    valid = np.flatnonzero(~zero & nonzero)
    if valid.size == 0:
        label = f"target {name!r}" if name else "the target set"
        raise CropiError(f"{label} has no prompt with a non-zero gradient: all target rewards are equal",
                         field="rollout.k_target", fix="increase k_target or use an easier target set")
    valid = _sample_targets(valid, max_n, seed)
    rows = np.empty((valid.size, store.k), dtype=np.float32)
    for start, feats, _ in store.chunks():
        mine = valid[(valid >= start) & (valid < start + len(feats))]
        rows[np.searchsorted(valid, mine)] = feats[mine - start]
    used = rows.astype(np.float64)
    return used.mean(axis=0), [store.ids[i] for i in valid], used


def store_cosine_scores(store: FeatureStore, target_means: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`cosine_scores` of a stored pool (the ``paper`` scorer), read chunk by chunk: the
    same numbers, with memory of one chunk whatever the pool's size."""
    out = {t: np.empty(store.n, dtype=np.float64) for t in target_means}
    for start, feats, zero in store.chunks(_CHUNK_ROWS):
        for t, v in cosine_scores(feats, target_means, zero).items():
            out[t][start:start + len(v)] = v
    return out


def cosine_scores(pool_feats: np.ndarray, target_means: Mapping[str, np.ndarray],
                  zero_grad: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cosine of every pool row with every target mean: ``{target: [n] float64}``.

    ``pool_feats [n, k]`` (any float dtype; computed in float64 in row chunks), ``target_means``
    ``{name: [k]}``. Rows with a zero norm, or marked in ``zero_grad [n]``, get NaN.
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
    if zero_grad is not None:
        out[:, np.asarray(zero_grad, dtype=bool)] = np.nan
    return {name: out[i] for i, name in enumerate(names)}


SPEC_KEY = b"cropi.score_spec"
"""Parquet schema metadata key of a score table: JSON of what made the scores (the scorer)."""


def score_table(ids: Sequence[str], scores: Mapping[str, np.ndarray],
                pass_rate: Sequence[float] | np.ndarray, source: Sequence[str],
                level: Sequence[str | None], spec: Mapping[str, Any] | None = None,
                extra: Mapping[str, np.ndarray] | None = None) -> pa.Table:
    """One row per pool prompt: id, source, level, pass_rate, zero_grad, score_<target>...

    ``spec`` (e.g. ``{"scorer": "paper", "scorer_options": {}}``) is stored in the schema metadata
    (:func:`scorer_spec` reads it back). ``extra``: more float columns ``[n]`` (e.g. ``ess``).

    ``zero_grad`` is True where any target's score is NaN (the prompt has no gradient). Fused
    scores and ranks are not stored: they depend on the budget of a selection and are computed by
    :mod:`cropi.select.fusion` when one is made.
    """
    n = len(ids)
    pass_rate = np.asarray(pass_rate, dtype=np.float64)
    lengths = {"pass_rate": pass_rate.shape[0], "source": len(source),
               "level": len(level), **{f"score_{t}": len(s) for t, s in scores.items()}}
    bad = {key: value for key, value in lengths.items() if value != n}
    if bad:
        raise ValueError(f"score_table: {n} ids but lengths {bad}")
    zero_grad = np.zeros(n, dtype=bool)
    for values in scores.values():
        zero_grad |= np.isnan(np.asarray(values, dtype=np.float64))
    columns: dict[str, pa.Array] = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "source": pa.array([str(s) for s in source], pa.string()),
        "level": pa.array([None if v is None else str(v) for v in level], pa.string()),
        "pass_rate": pa.array(pass_rate, pa.float64()),
        "zero_grad": pa.array(zero_grad, pa.bool_()),
    }
    for target, values in scores.items():
        columns[f"score_{target}"] = pa.array(np.asarray(values, dtype=np.float64), pa.float64())
    for name, values in (extra or {}).items():
        if len(values) != n:
            raise ValueError(f"score_table: {n} ids but column {name!r} has {len(values)}")
        columns[name] = pa.array(np.asarray(values, dtype=np.float64), pa.float64())
    table = pa.table(columns)
    if spec is not None:
        table = table.replace_schema_metadata({SPEC_KEY: json.dumps(dict(spec), sort_keys=True)})
    return table


def scorer_spec(table: pa.Table) -> dict[str, Any]:
    """What made a score table's scores; tables written before scorers existed are ``paper``."""
    meta = table.schema.metadata or {}
    if SPEC_KEY in meta:
        return json.loads(meta[SPEC_KEY])
    return {"scorer": "paper", "scorer_options": {}}


def target_scores(table: pa.Table, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The per-target score columns of a score table, aligned to ``ids`` (``{target: [n]}``).

    Also reads tables written before fusion moved to selection time (they have extra columns).
    """
    index = {str(i): pos for pos, i in enumerate(table.column("id").to_pylist())}
    missing = [i for i in ids if i not in index]
    if missing:
        raise CropiError(f"the score table has no row for {len(missing)} pool prompts (e.g. {missing[:3]})",
                         fix="the pool changed since scoring: rescore with --overwrite")
    pos = np.array([index[i] for i in ids], dtype=np.int64)
    return {c.removeprefix("score_"): table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[pos]
            for c in table.column_names if c.startswith("score_")}


def write_scores(path: str | Path, table: pa.Table) -> None:
    """Write the score table to Parquet atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    log.info("wrote %d scores to %s", table.num_rows, path)


_RESCORE = ("rerun `cropi score` for this stage on the run: the scores are computed again from the "
            "stored features")


def read_scores(path: str | Path) -> pa.Table:
    """Read a score table written by :func:`write_scores`. One line naming the file when it
    differs from the done record of its stage (``state.json`` beside it) or fails to read."""
    path = Path(path)
    if not path.exists():
        raise CropiError("does not exist", file=path, fix="run the scoring step first")
    record = _done_record(path)
    if record is not None:
        why = record_mismatch(path, record)
        if why is not None:
            raise damaged(path, f"{why}; damaged or changed since it was scored", fix=_RESCORE)
    try:
        return pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise damaged(path, exc, fix=_RESCORE) from None


def _done_record(path: Path) -> dict[str, Any] | None:
    """The record of ``path`` in the ``scored`` entry of the ``state.json`` beside it, if any."""
    try:
        state = json.loads((path.parent / "state.json").read_text(encoding="utf-8"))
        rec = state["scored"]["files"][path.name]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rec if isinstance(rec, dict) else None
