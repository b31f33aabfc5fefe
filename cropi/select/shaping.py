"""Difficulty- and diversity-aware selection on top of the influence ranking (numpy only).

The influence ranking (fused score for the selection's budget, :mod:`cropi.select.fusion`) stays
the order of preference; these rules decide which of its prompts fill the budget:

- **level quota** (``quota``): a share of the budget per difficulty level (``level`` label;
  ``equal``: the same share for every level among the scored prompts). Each level gets its count
  (largest remainder) from its best-ranked prompts; a level with too few scored prompts leaves its
  places to the best-ranked prompts of the others.
- **pass-rate window** (``window: [lo, hi]``, ``window_step``, ``rate``): only prompts whose pass
  rate lies in ``[lo - m * step, hi - m * step]`` at stage m (clipped to [0, 1]), best-ranked
  first; ``rate: current`` reads the stage's policy's pass rate where the stage estimated it
  (:attr:`SelectionContext.current_pass_rate`) and beta's elsewhere, ``beta`` reads beta's only.
  When fewer prompts lie inside, the best-ranked outside fill the budget (logged).
- **maximal marginal relevance** (``mmr_lambda``, ``space``, ``candidates``): among the top
  ``candidates x n`` of the ranking, picks one at a time the prompt maximising
  ``lambda * relevance - (1 - lambda) * max cosine to the prompts already picked``, relevance =
  1 - rank / #candidates (1 for the best); vectors are the prompts' embeddings (``space:
  embedding``) or projected gradients (``gradient``), centred by the candidates' mean.
  ``mmr_lambda = 1`` is the plain top n.
- **cap per cluster** (``clusters``, ``cluster_cap``, ``space``, ``candidates``): seeded k-means
  of the candidates' (centred, unit) vectors into ``clusters`` clusters; fill the budget in rank
  order with at most ``ceil(cluster_cap x n)`` prompts per cluster (then, if the candidates run
  out, the rest in rank order).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cropi.utils.errors import CropiError

log = logging.getLogger(__name__)

OPTION_DEFAULTS: dict[str, Any] = {
    "quota": "equal",
    "window": [0.125, 0.625],
    "window_step": 0.0,
    "rate": "current",
    "mmr_lambda": 0.5,
    "space": "embedding",
    "candidates": 3.0,
    "clusters": 8,
    "cluster_cap": 0.25,
}
"""``select.options`` read by the difficulty- and diversity-aware policies, with their defaults."""

DIFFICULTY_KEYS = {"quota": ("quota",), "window": ("window", "window_step", "rate"), None: ()}
DIVERSITY_KEYS = {"mmr": ("mmr_lambda", "space", "candidates"),
                  "cap": ("clusters", "cluster_cap", "space", "candidates"), None: ()}
SPACES = ("embedding", "gradient")


def resolve_options(options: Mapping[str, Any] | None, difficulty: str | None,
                    diversity: str | None) -> dict[str, Any]:
    """The options a policy with this ``difficulty`` and ``diversity`` rule reads, defaults filled
    in and checked; a key no rule of the policy reads is an error (``select.options``)."""
    options = dict(options or {})
    keys = list(dict.fromkeys(DIFFICULTY_KEYS[difficulty] + DIVERSITY_KEYS[diversity]))
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise CropiError(f"unknown option(s) {', '.join(unknown)} for this policy",
                         field="select.options", fix=f"this policy reads {', '.join(keys) or 'no options'}")
    out = {k: options.get(k, OPTION_DEFAULTS[k]) for k in keys}
    _check_options(out)
    return out


def _check_options(o: dict[str, Any]) -> None:
    def bad(key: str, fix: str) -> CropiError:
        return CropiError(f"invalid {key}: {o[key]!r}", field=f"select.options.{key}", fix=fix)

    if "quota" in o and not (o["quota"] == "equal" or (isinstance(o["quota"], Mapping) and o["quota"]
                                                     and all(float(v) >= 0 for v in o["quota"].values())
                                                     and sum(float(v) for v in o["quota"].values()) > 0)):
        raise bad("quota", "use equal, or a mapping level -> share (shares >= 0, not all 0)")
    if "window" in o:
        w = o["window"]
        if not (isinstance(w, Sequence) and len(w) == 2 and 0 <= float(w[0]) <= float(w[1]) <= 1):
            raise bad("window", "use [lo, hi] with 0 <= lo <= hi <= 1")
        o["window"] = [float(w[0]), float(w[1])]
    if "rate" in o and o["rate"] not in ("current", "beta"):
        raise bad("rate", "use current or beta")
    if "mmr_lambda" in o and not 0 <= float(o["mmr_lambda"]) <= 1:
        raise bad("mmr_lambda", "use a number in [0, 1] (1: plain top n)")
    if "space" in o and o["space"] not in SPACES:
        raise bad("space", f"use one of {', '.join(SPACES)}")
    if "candidates" in o and not float(o["candidates"]) >= 1:
        raise bad("candidates", "use a multiple of the budget >= 1")
    if "clusters" in o and not (isinstance(o["clusters"], int) and o["clusters"] >= 1):
        raise bad("clusters", "use an integer >= 1")
    if "cluster_cap" in o and not 0 < float(o["cluster_cap"]) <= 1:
        raise bad("cluster_cap", "use a share of the budget in (0, 1]")


def window_at(options: Mapping[str, Any], stage: int) -> list[float]:
    """The pass-rate window ``[lo, hi]`` at ``stage``: moved down by ``window_step`` per stage."""
    lo, hi = (float(x) for x in options["window"])
    shift = float(options.get("window_step", 0.0)) * stage
    return [min(1.0, max(0.0, lo - shift)), min(1.0, max(0.0, hi - shift))]


def _largest_remainder(shares: np.ndarray, n: int) -> np.ndarray:
    raw = shares / shares.sum() * n
    counts = np.floor(raw).astype(np.int64)
    rest = n - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    return counts


def level_quota(order: np.ndarray, levels: Sequence[str | None], n: int,
                quota: str | Mapping[str, float] = "equal") -> np.ndarray:
    """Positions filling ``n`` places from the ranking ``order`` with a quota per level, in rank
    order. ``levels [pool]``: level labels (None counts as the level ``none``)."""
    order = np.asarray(order, dtype=np.int64)
    lab = np.array(["none" if levels[i] is None else str(levels[i]) for i in order], dtype=object)
    names = list(dict.fromkeys(sorted(set(lab.tolist())))) if quota == "equal" else \
        [str(k) for k in quota]
    if not names:
        return order[:0]
    shares = np.ones(len(names)) if quota == "equal" else \
        np.array([float(quota[k]) for k in quota], dtype=np.float64)  # type: ignore[index]
    counts = dict(zip(names, _largest_remainder(shares, n).tolist()))
    taken = np.zeros(order.size, dtype=bool)
    for name, count in counts.items():
        taken[np.flatnonzero(lab == name)[:count]] = True
    short = n - int(taken.sum())
    if short > 0:
        log.info("level quota: %d places left by levels with too few scored prompts go to the "
                 "best-ranked others", short)
        taken[np.flatnonzero(~taken)[:short]] = True
    return order[taken]


def window_order(order: np.ndarray, rate: np.ndarray, window: Sequence[float]) -> tuple[np.ndarray, int]:
    """``(ranking, n_inside)``: the prompts of ``order`` whose ``rate`` lies in ``window``
    (inclusive) in rank order, then the others in rank order."""
    order = np.asarray(order, dtype=np.int64)
    r = np.asarray(rate, dtype=np.float64)[order]
    inside = (r >= window[0]) & (r <= window[1])
    return np.concatenate([order[inside], order[~inside]]), int(inside.sum())


def pass_window(order: np.ndarray, rate: np.ndarray, n: int, window: Sequence[float]) -> np.ndarray:
    """The best-ranked ``n`` of ``order`` whose ``rate`` lies in ``window`` (inclusive), then, if
    too few do, the best-ranked others."""
    ranking, n_inside = window_order(order, rate, window)
    if n_inside < n:
        log.warning("pass-rate window [%.3f, %.3f]: %d scored prompts inside for a budget of %d; the "
                    "best-ranked others fill the rest", window[0], window[1], n_inside, n)
    return ranking[:n]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows centred by their mean and scaled to unit length (zero rows stay zero), float64."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v - v.mean(axis=0)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def mmr(order: np.ndarray, vectors: np.ndarray, n: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance over the candidates ``order`` (best first): ``n`` positions in
    pick order. ``vectors [pool, d]``; relevance 1 - rank / len(order)."""
    order = np.asarray(order, dtype=np.int64)
    m = order.size
    if m == 0 or n <= 0:
        return order[:0]
    v = unit_rows(vectors[order])
    relevance = 1.0 - np.arange(m) / m
    max_sim = np.full(m, -np.inf)
    free = np.ones(m, dtype=bool)
    picked: list[int] = []
    for _ in range(min(n, m)):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = np.where(free, lam * relevance - (1 - lam) * penalty, -np.inf)
        j = int(np.argmax(value))  # ties: the better-ranked
        picked.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, v @ v[j])
    return order[np.array(picked, dtype=np.int64)]


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances ``[m, k]`` of rows ``x`` to centres ``c`` (no [m, k, d] temporary)."""
    return np.maximum((x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * x @ c.T, 0.0)


def kmeans(vectors: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Cluster labels ``[m]`` of seeded k-means (k-means++ start, Lloyd iterations) on unit rows."""
    x = unit_rows(vectors)
    m = x.shape[0]
    k = min(k, m)
    rng = np.random.default_rng(seed)
    c = x[[int(rng.integers(m))]]
    for _ in range(1, k):
        d2 = _sq_dist(x, c).min(axis=1)
        total = d2.sum()
        nxt = int(rng.choice(m, p=d2 / total)) if total > 0 else int(rng.integers(m))
        c = np.vstack([c, x[nxt]])
    labels = np.full(m, -1, dtype=np.int64)
    for _ in range(iters):
        new = np.argmin(_sq_dist(x, c), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if np.any(labels == j):
                c[j] = x[labels == j].mean(axis=0)
    return labels


def cluster_cap(order: np.ndarray, vectors: np.ndarray, n: int, clusters: int, cap: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, labels of order)``: ``n`` of ``order`` in rank order with at most
    ``ceil(cap * n)`` per k-means cluster, then the best-ranked others if the candidates run out."""
    order = np.asarray(order, dtype=np.int64)
    if order.size == 0:
        return order, order
    labels = kmeans(vectors[order], clusters, seed)
    limit = max(1, math.ceil(cap * n))
    used: dict[int, int] = {}
    taken = np.zeros(order.size, dtype=bool)
    for j, lab in enumerate(labels.tolist()):
        if taken.sum() >= n:
            break
        if used.get(lab, 0) < limit:
            used[lab] = used.get(lab, 0) + 1
            taken[j] = True
    short = n - int(taken.sum())
    if short > 0:
        log.info("cluster cap: the candidates' clusters hold too few prompts under the cap; %d "
                 "places go to the best-ranked others", short)
        taken[np.flatnonzero(~taken)[:short]] = True
    return order[taken], labels


__all__ = ["OPTION_DEFAULTS", "cluster_cap", "kmeans", "level_quota", "mmr", "pass_window", "window_order",
           "resolve_options", "unit_rows", "window_at"]
