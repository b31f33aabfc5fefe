"""cropi.report.selection_quality against naive float64 loops on hand-made pools.

The references re-derive every metric from its definition with plain Python (sorted lists, sums,
``math.comb``); they share no code with the module under test or with cropi.select.fusion.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cropi.report import selection_quality as sq

NAN = float("nan")


# ----------------------------------------------------------------------------- references
def _order(values) -> list[int]:
    """Finite positions, best first, ties: earlier position first."""
    return sorted((i for i, v in enumerate(values) if math.isfinite(v)), key=lambda i: (-values[i], i))


def _rrf(scores: dict[str, list[float]], n: int) -> list[float]:
    m = len(next(iter(scores.values())))
    nan_rows = [any(not math.isfinite(s[i]) for s in scores.values()) for i in range(m)]
    fused = [0.0] * m
    for s in scores.values():
        masked = [NAN if nan_rows[i] else s[i] for i in range(m)]
        for rank, i in enumerate(_order(masked)[:n], 1):
            fused[i] += 1.0 / rank
    return [NAN if nan_rows[i] else fused[i] for i in range(m)]


def _enrichment(picks, rel, zero, rows=None) -> float:
    rows = list(range(len(rel))) if rows is None else list(rows)
    grad = [r for r in rows if not zero[r]]
    if not picks or not grad:
        return NAN
    base = sum(rel[r] for r in grad) / len(grad)
    return (sum(rel[p] for p in picks) / len(picks)) / base if base > 0 else NAN


def _percentile(values, q: float) -> float:
    v = sorted(values)
    h = (len(v) - 1) * q / 100
    lo = math.floor(h)
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def _ci(values):
    v = [x for x in values if math.isfinite(x)]
    return [_percentile(v, 2.5), _percentile(v, 97.5)] if v else [None, None]


def _ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for t in range(i, j + 1):
            r[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return r


def _spearman(a, b) -> float:
    ok = [i for i in range(len(a)) if math.isfinite(a[i]) and math.isfinite(b[i])]
    if len(ok) < 3:
        return NAN
    ra, rb = _ranks([a[i] for i in ok]), _ranks([b[i] for i in ok])
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# ----------------------------------------------------------------------------- a hand-made pool
# 10 prompts; families a (relevant: 0, 1, 2, 7) and b; prompts 5 and 9 have no gradient in A,
# prompt 4 none in B (their scores are NaN there).
REL = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
SRC = np.array(["a" if r else "b" for r in REL])
ZERO = {"A": np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 1], dtype=bool),
        "B": np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)}
T1 = {"A": [0.9, 0.1, 0.5, 0.8, 0.2, NAN, 0.3, 0.7, 0.5, NAN],
      "B": [0.4, 0.6, 0.9, 0.1, NAN, 0.2, 0.3, 0.8, 0.6, 0.0]}
T2 = {"A": [0.2, 0.9, 0.4, 0.1, 0.6, NAN, 0.8, 0.3, 0.6, NAN],
      "B": [0.7, 0.1, 0.2, 0.9, NAN, 0.5, 0.6, 0.3, 0.2, 0.8]}
BOOT = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 1, 3, 3, 5, 7, 8, 9, 9],
                 [2, 2, 2, 4, 4, 6, 6, 8, 1, 0], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                 [3, 4, 5, 6, 8, 9, 9, 9, 3, 4]])
N = 3


def _arr(d):
    return {k: np.array(v, dtype=np.float64) for k, v in d.items()}


def test_top_n_rrf_share_enrichment_overlap() -> None:
    a = np.array(T1["A"])
    assert sq.top_n(a, N).tolist() == _order(T1["A"])[:N] == [0, 3, 7]
    assert sq.top_n(np.array([1.0, 2.0, 2.0, NAN]), 3).tolist() == [1, 2, 0]  # ties: earlier first
    fused = sq.rrf({"t1": a, "t2": np.array(T2["A"])}, N)
    ref = _rrf({"t1": T1["A"], "t2": T2["A"]}, N)
    assert all(_close(x, y) for x, y in zip(fused.tolist(), ref))
    picks = np.array([0, 3, 7])
    assert sq.share(picks, REL) == 2 / 3
    assert math.isnan(sq.share(np.array([], dtype=int), REL))
    assert sq.grad_share(REL, ZERO["A"]) == 4 / 8
    assert sq.enrichment(picks, REL, ZERO["A"]) == pytest.approx((2 / 3) / (4 / 8), rel=1e-15)
    rows = BOOT[1]
    picks_b = rows[[0, 2, 6]]
    assert _close(sq.enrichment(picks_b, REL, ZERO["A"], rows),
                  _enrichment(picks_b.tolist(), REL.tolist(), ZERO["A"].tolist(), rows.tolist()))
    assert math.isnan(sq.enrichment(picks, np.zeros(10, bool), ZERO["A"]))  # no relevant prompt
    assert sq.overlap(np.array([0, 3, 7]), np.array([7, 2, 0]), N) == 2 / 3


def test_ci95_and_spearman_match_the_definitions() -> None:
    vals = [0.3, NAN, 1.7, 0.2, 2.9, 1.1, math.inf, 0.8]
    assert _close(sq.ci95(np.array(vals)), _ci(vals))
    assert sq.ci95(np.array([NAN])) == [None, None]
    a, b = np.array(T1["A"]), np.array(T1["B"])
    assert _close(sq.spearman(a, b), _spearman(T1["A"], T1["B"]))
    assert math.isnan(sq.spearman(np.array([1.0, 2.0, NAN]), np.array([1.0, 2.0, 3.0])))


def test_fused_selection_metrics_against_loops() -> None:
    """The README headline numbers: fused enrichment (mean of the halves) with its bootstrap
    interval, and the top-n overlap of the halves with its interval."""
    per_t = {"t1": _arr(T1), "t2": _arr(T2)}
    res = sq.selection_metrics(sq.fused_rule(per_t, N), ("A", "B"), ZERO, REL, None, N, BOOT, None, SRC)

    def picks(d, rows):  # positions into rows, re-fused on the resample
        fused = _rrf({t: [s[d][r] for r in rows] for t, s in (("t1", T1), ("t2", T2))}, N)
        return _order(fused)[:N]

    point, boot = {}, {}
    for d in ("A", "B"):
        p = picks(d, list(range(10)))
        point[d] = _enrichment(p, REL.tolist(), ZERO[d].tolist())
        pd = res["per_draw"][d]
        assert pd["n_picks"] == N and _close(pd["enrichment"], point[d])
        assert _close(pd["share"], sum(REL[i] for i in p) / N)
        assert pd["families"] == {f: sum(SRC[i] == f for i in p) for f in sorted(set(SRC[p]))}
        boot[d] = [_enrichment([rows[j] for j in picks(d, rows.tolist())], REL.tolist(),
                               ZERO[d].tolist(), rows.tolist()) for rows in BOOT]
        assert _close(pd["enrichment_ci"], _ci(boot[d]))
    assert _close(res["enrichment_mean_halves"], (point["A"] + point["B"]) / 2)
    mean_boot = [(x + y) / 2 for x, y in zip(boot["A"], boot["B"])]
    assert _close(res["bootstrap"].tolist(), mean_boot)
    assert _close(res["enrichment_mean_halves_ci"], _ci(mean_boot))
    pa, pb = picks("A", list(range(10))), picks("B", list(range(10)))
    assert _close(res["overlap"], len(set(pa) & set(pb)) / N)
    ov = [len(set(picks("A", rows.tolist())) & set(picks("B", rows.tolist()))) / N for rows in BOOT]
    assert _close(res["overlap_ci"], _ci(ov))
    assert "spearman" not in res


def test_per_target_metrics_with_stability_and_one_draw() -> None:
    s = _arr(T1)
    related = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    res = sq.selection_metrics(sq.rank_rule(s, N), ("A", "B"), ZERO, REL, related, N, BOOT, s)
    for d in ("A", "B"):
        p = _order(T1[d])[:N]
        assert _close(res["per_draw"][d]["related_share"], sum(related[i] for i in p) / N)
    assert _close(res["spearman"], _spearman(T1["A"], T1["B"]))
    assert _close(res["spearman_ci"], _ci([_spearman([T1["A"][r] for r in rows], [T1["B"][r] for r in rows])
                                           for rows in BOOT]))
    assert res["n_both"] == 7
    one = sq.selection_metrics(sq.rank_rule({"full": s["A"]}, N), ("full",), {"full": ZERO["A"]}, REL,
                               None, N, BOOT, None)
    assert set(one) == {"per_draw"}  # no halves: no mean, no overlap
    # three draws pooled (selection_cost's --draws): their mean enrichment, no pairwise overlap
    three = {"A": s["A"], "B": s["B"], "C": s["A"][::-1].copy()}
    zero3 = {**ZERO, "C": ZERO["A"][::-1].copy()}
    res3 = sq.selection_metrics(sq.rank_rule(three, N), ("A", "B", "C"), zero3, REL, None, N, BOOT, None,
                                pooled=("A", "B", "C"))
    points = [_enrichment(_order(list(three[d]))[:N], REL.tolist(), zero3[d].tolist()) for d in "ABC"]
    assert _close(res3["enrichment_mean_halves"], sum(points) / 3)
    assert "overlap" not in res3


def test_learnability_expected_averages_over_tie_orders() -> None:
    p = np.array([0.5, 0.5, 0.25, 0.75, 0.5, 0.0, 0.25, 0.75])
    zero = np.array([0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    rel = np.array([1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    for n in (1, 2, 3, 5):
        shares = []  # every strict order consistent with p(1-p), ties in every order
        cand = [i for i in range(8) if not zero[i] and p[i] * (1 - p[i]) > 0]
        for perm in itertools.permutations(cand):
            order = sorted(perm, key=lambda i: -p[i] * (1 - p[i]))  # stable: ties keep perm order
            top = order[:n]
            shares.append(sum(rel[i] for i in top) / len(top))
        assert sq.learnability_expected(p, zero, rel, n) == pytest.approx(sum(shares) / len(shares), rel=1e-12)


def test_hypergeom_interval_against_the_counts() -> None:
    def ppf(m, r, n, q):
        cdf = 0.0
        for x in range(0, n + 1):
            cdf += math.comb(r, x) * math.comb(m - r, n - x) / math.comb(m, n)
            if cdf >= q - 1e-12:
                return x
        return n

    for m, r, n in ((20, 5, 4), (50, 10, 5), (7, 7, 3), (9, 0, 2)):
        assert sq.hypergeom_interval(m, r, n) == [ppf(m, r, n, 0.025) / n, ppf(m, r, n, 0.975) / n]
    assert sq.hypergeom_interval(0, 0, 3) is None and sq.hypergeom_interval(5, 2, 0) is None


def test_pair_overlaps_every_pair_once_and_only_across_seeds() -> None:
    today = {"today-r0": (0, ["a", "b", "c"]), "today-r1": (1, ["a", "b", "d"]), "today-r2": (2, ["e", "f", "c"])}
    floor = sq.pair_overlaps(today, today, 3)
    assert floor == pytest.approx({"today-r0 ~ today-r1": 2 / 3, "today-r0 ~ today-r2": 1 / 3,
                                   "today-r1 ~ today-r2": 0.0})
    new = {"new-r1": (1, ["a", "b", "c"]), "new-r2": (2, ["e", "f", "d"])}
    cross = sq.pair_overlaps(new, today, 3)
    # new-r1 is never paired with today-r1 (same seed), however alike their picks
    assert cross == pytest.approx({"new-r1 ~ today-r0": 1.0, "new-r1 ~ today-r2": 1 / 3,
                                   "new-r2 ~ today-r0": 0.0, "new-r2 ~ today-r1": 1 / 3})
