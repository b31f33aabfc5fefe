"""Selection-quality metrics of stage-0 picks: enrichment, stability between draws, intervals.

numpy and scipy only (benchmarks/selection_quality.py and benchmarks/stability_curve.py; README's
selection-quality table). Picks are positions into the pool; ``relevant [n]`` marks the pool
prompts of the target's family, ``zero [n]`` those without a gradient in a draw.

- enrichment: the relevant share of the picks / the relevant share among pool prompts with a
  gradient (1 = chance among the prompts a scorer can rank);
- overlap: ``|top(A) & top(B)| / n`` of two draws' picks;
- intervals: 95 % percentile bootstrap over pool prompts, scores held fixed: a resample ``rows``
  is an array of pool positions drawn with replacement, each copy of a prompt counts on its own,
  and a ranking rule chooses its picks among ``rows`` (fused picks are re-fused on every resample).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cropi.select.fusion import fuse, order_desc

OrderFn = Callable[[str, np.ndarray], np.ndarray]
"""A ranking rule: ``order_fn(draw, rows) -> picks``, positions into ``rows``."""


def top_n(score: np.ndarray, n: int) -> np.ndarray:
    """Best n finite positions (ties: earlier first), as cropi's selection orders them."""
    return order_desc(score)[:n]


def rrf(scores: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Reciprocal-rank fusion of per-target scores for a budget of n (cropi's ``rrf``)."""
    return fuse(scores, n, "rrf")


def ci95(values: np.ndarray) -> list[float | None]:
    """2.5 and 97.5 percentiles of the finite ``values`` ([None, None] when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else [None, None]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation over the positions finite in both (NaN with fewer than 3)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def share(picks: np.ndarray, mask: np.ndarray) -> float:
    """The share of ``mask`` among the pool positions ``picks`` (NaN for no picks)."""
    return float(mask[picks].mean()) if picks.size else float("nan")


def grad_share(relevant: np.ndarray, zero: np.ndarray, rows: np.ndarray | None = None) -> float:
    """The relevant share among the prompts of ``rows`` (default: the pool) with a gradient; NaN
    when none has one."""
    rel, nz = (relevant, ~zero) if rows is None else (relevant[rows], ~zero[rows])
    return float(rel[nz].mean()) if nz.any() else float("nan")


def enrichment(picks: np.ndarray, relevant: np.ndarray, zero: np.ndarray,
               rows: np.ndarray | None = None) -> float:
    """:func:`share` of the picks (pool positions) / :func:`grad_share` of ``rows``; NaN when the
    latter is 0 or NaN."""
    base = grad_share(relevant, zero, rows)
    return share(picks, relevant) / base if base > 0 else float("nan")


def overlap(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """``|set(a) & set(b)| / n``: how many of a budget of n two draws pick alike."""
    return len(set(np.asarray(a).tolist()) & set(np.asarray(b).tolist())) / n


def pair_overlaps(a: Mapping[str, tuple[int, Sequence[Any]]], b: Mapping[str, tuple[int, Sequence[Any]]],
                  n: int) -> dict[str, float]:
    """:func:`overlap` of every distinct pair of a draw of ``a`` and a draw of ``b`` (``{label:
    (rollout seed, picks)}``) whose rollout seeds differ, each pair once, named ``"x ~ y"``
    (labels sorted). ``a`` and ``b`` may be the same draws: then every pair of them."""
    out: dict[str, float] = {}
    for x, (sx, px) in a.items():
        for y, (sy, py) in b.items():
            name = " ~ ".join(sorted((x, y)))
            if sx != sy and name not in out:
                out[name] = overlap(np.asarray(px), np.asarray(py), n)
    return out


def rank_rule(values: Mapping[str, np.ndarray], n: int) -> OrderFn:
    """Ranking rule of fixed scores per draw: the top n (NaN never picked; ties: earlier row)."""
    def fn(d: str, rows: np.ndarray) -> np.ndarray:
        return top_n(values[d][rows], n)
    return fn


def fused_rule(per_target: Mapping[str, Mapping[str, np.ndarray]], n: int) -> OrderFn:
    """Ranking rule of RRF over targets (``{target: {draw: scores}}``), fused anew on each resample
    (the fusion uses the top-n lists)."""
    def fn(d: str, rows: np.ndarray) -> np.ndarray:
        return top_n(rrf({t: s[d][rows] for t, s in per_target.items()}, n), n)
    return fn


def selection_metrics(order_fn: OrderFn, draws: Sequence[str], zero: Mapping[str, np.ndarray],
                      relevant: np.ndarray, related: np.ndarray | None, n: int, boot: np.ndarray,
                      stab_scores: Mapping[str, np.ndarray] | None,
                      src: np.ndarray | None = None, pooled: Sequence[str] = ("A", "B")) -> dict[str, Any]:
    """The metrics of one ranking rule on ``draws`` (names; ``zero[draw]`` their zero masks).

    ``boot [B, n_pool]``: the bootstrap resamples of pool positions. Per draw: picks, share,
    :func:`grad_share`, pool share, :func:`enrichment` with its interval, the ``related`` share and
    (with ``src``, the pool's family labels) the picks per family. The draws named in ``pooled``
    (default the two halves "A" and "B"): their mean enrichment with interval (``*_mean_halves``).
    With exactly "A" and "B" pooled: the picks' :func:`overlap` with interval and (with
    ``stab_scores`` ``{"A": scores, "B": scores}``) their :func:`spearman` with an interval over
    the first 300 resamples. ``bootstrap`` holds the halves' mean enrichment per resample, for
    paired differences between rules on the same resamples (pop it before saving).
    """
    allrows = np.arange(relevant.size)
    res: dict[str, Any] = {"per_draw": {}}
    point = {}
    for d in draws:
        picks = allrows[order_fn(d, allrows)]
        base = grad_share(relevant, zero[d])
        point[d] = enrichment(picks, relevant, zero[d])
        res["per_draw"][d] = {"n_picks": int(picks.size), "share": share(picks, relevant),
                              "share_grad": base, "share_pool": float(relevant.mean()),
                              "enrichment": point[d],
                              "related_share": None if related is None else share(picks, related),
                              "n_grad": int((~zero[d]).sum())}
        if src is not None:
            fams, counts = np.unique(src[picks], return_counts=True)
            res["per_draw"][d]["families"] = {str(f): int(c) for f, c in zip(fams, counts)}
    bs: dict[str, list[float]] = {d: [] for d in draws}
    for rows in boot:
        for d in draws:
            bs[d].append(enrichment(rows[order_fn(d, rows)], relevant, zero[d], rows))
    for d in draws:
        res["per_draw"][d]["enrichment_ci"] = ci95(np.array(bs[d]))
    halves = [d for d in draws if d in pooled]
    if halves:
        res["enrichment_mean_halves"] = float(np.mean([point[d] for d in halves]))
        res["bootstrap"] = np.mean([bs[d] for d in halves], axis=0)
        res["enrichment_mean_halves_ci"] = ci95(res["bootstrap"])
        res["share_mean_halves"] = float(np.mean([res["per_draw"][d]["share"] for d in halves]))
        if related is not None:
            res["related_share_mean_halves"] = float(np.mean([res["per_draw"][d]["related_share"]
                                                              for d in halves]))
    if sorted(halves) == ["A", "B"]:
        res["overlap"] = overlap(allrows[order_fn("A", allrows)], allrows[order_fn("B", allrows)], n)
        # positions in the resample: each copy of a prompt counts on its own
        res["overlap_ci"] = ci95(np.array([overlap(order_fn("A", rows), order_fn("B", rows), n)
                                           for rows in boot]))
        if stab_scores is not None:
            a, b = stab_scores["A"], stab_scores["B"]
            res["spearman"] = spearman(a, b)
            res["spearman_ci"] = ci95(np.array([spearman(a[rows], b[rows]) for rows in boot[:300]]))
            res["n_both"] = int((np.isfinite(a) & np.isfinite(b)).sum())
    return res


def learnability_expected(p: np.ndarray, zero: np.ndarray, relevant: np.ndarray, n: int) -> float:
    """Expected relevant share of the top n by p(1-p) (pass rate p), over random tie orders."""
    v = np.where(zero, -1.0, p * (1 - p))
    levels = np.unique(v[v > 0])[::-1]
    taken, hits = 0, 0.0
    for lv in levels:
        grp = v == lv
        m = int(grp.sum())
        take = min(m, n - taken)
        hits += take * relevant[grp].mean()
        taken += take
        if taken >= n:
            break
    return hits / taken if taken else float("nan")


def hypergeom_interval(m: int, r: int, n: int) -> list[float] | None:
    """95 % interval of the relevant share of n picks drawn at random, without replacement, from
    m prompts of which r are relevant (None when m or n is 0)."""
    from scipy.stats import hypergeom

    if m == 0 or n == 0:
        return None
    lo, hi = hypergeom(m, r, n).ppf([0.025, 0.975])
    return [float(lo) / n, float(hi) / n]
