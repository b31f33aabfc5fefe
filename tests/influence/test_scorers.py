"""Scorer variants (cropi.influence.scorers) against float64 naive loops, a planted case, ESS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cropi.influence import scorers
from cropi.influence.scores import cosine_scores
from cropi.utils.errors import CropiError


# ----------------------------------------------------------------------------- naive references
def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return float("nan") if na == 0 or nb == 0 else dot / (na * nb)


def _rows(feats: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in r] for r in feats]


def _valid(feats: np.ndarray, zero: np.ndarray) -> list[int]:
    return [i for i, r in enumerate(_rows(feats)) if not zero[i] and any(v != 0 for v in r)]


def _mean(rows: list[list[float]]) -> list[float]:
    return [sum(r[j] for r in rows) / len(rows) for j in range(len(rows[0]))]


def _unit(r: list[float]) -> list[float]:
    n = math.sqrt(sum(v * v for v in r))
    return [v / n for v in r]


def _naive_paper(feats, zero, means):
    ok = set(_valid(feats, zero))
    return {t: [(_cos(r, list(m)) if i in ok else float("nan")) for i, r in enumerate(_rows(feats))]
            for t, m in means.items()}


def _naive_centred(feats, zero, means, tfeats=None, unit=False):
    ok = _valid(feats, zero)
    rows = _rows(feats)
    prow = [_unit(rows[i]) if unit else rows[i] for i in ok]
    m = _mean(prow)
    out = {}
    for t, tm in means.items():
        if unit:
            tr = [_unit(list(r)) for r in _rows(tfeats[t]) if any(v != 0 for v in r)]
            tm = _mean(tr)
        tc = [a - b for a, b in zip(tm, m)]
        vals = []
        for i, r in enumerate(rows):
            if i not in ok:
                vals.append(float("nan"))
                continue
            rr = _unit(r) if unit else r
            vals.append(_cos([a - b for a, b in zip(rr, m)], tc))
        out[t] = vals
    return out


def _check(got: dict[str, np.ndarray], ref: dict[str, list[float]]) -> None:
    assert set(got) == set(ref)
    for t in ref:
        assert got[t].dtype == np.float64
        np.testing.assert_allclose(got[t], np.array(ref[t]), rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    n, k = 9, 6
    feats = rng.standard_normal((n, k)).astype(np.float32)
    feats[4] = 0  # an all-zero row
    zero = np.zeros(n, dtype=bool)
    zero[[4, 7]] = True  # row 7 is flagged but not zero: still NaN
    tfeats = {"a": rng.standard_normal((4, k)), "b": rng.standard_normal((5, k)), "c": rng.standard_normal((3, k))}
    tfeats["b"][2] = 0
    means = {t: f[np.any(f != 0, axis=1)].mean(axis=0) for t, f in tfeats.items()}
    return feats, zero, means, tfeats


# ----------------------------------------------------------------------------------- variants
def test_paper_is_cosine_scores(data) -> None:
    feats, zero, means, _ = data
    got = scorers.score("paper", feats, zero, means)
    ref = cosine_scores(feats, means, zero)
    for t in means:
        assert np.array_equal(got[t], ref[t], equal_nan=True)
    _check(got, _naive_paper(feats, zero, means))


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_differential_against_loop(data, reduce) -> None:
    feats, zero, means, _ = data
    c = _naive_paper(feats, zero, means)
    ref = {}
    for v in means:
        vals = []
        for i in range(feats.shape[0]):
            others = [c[u][i] for u in means if u != v]
            red = sum(others) / len(others) if reduce == "mean" else max(others)
            vals.append(c[v][i] - red)
        ref[v] = vals
    _check(scorers.score("differential", feats, zero, means, reduce=reduce), ref)


def test_differential_needs_two_targets(data) -> None:
    feats, zero, means, _ = data
    with pytest.raises(CropiError, match="at least two"):
        scorers.score("differential", feats, zero, {"a": means["a"]})


@pytest.mark.parametrize("unit", [False, True])
def test_centred_against_loop(data, unit) -> None:
    feats, zero, means, tfeats = data
    got = scorers.score("centred", feats, zero, means, target_feats=tfeats, unit=unit)
    _check(got, _naive_centred(feats, zero, means, tfeats, unit))


def test_unitmean_against_loop(data) -> None:
    feats, zero, means, tfeats = data
    umeans = {t: _mean([_unit(r) for r in _rows(f) if any(v != 0 for v in r)]) for t, f in tfeats.items()}
    _check(scorers.score("unitmean", feats, zero, means, target_feats=tfeats),
           _naive_paper(feats, zero, umeans))


def test_unitmean_differs_from_paper_when_norms_differ() -> None:
    tf = np.array([[100.0, 0.0], [0.0, 1.0]])  # mean is dominated by the big row; unit mean is not
    feats = np.array([[1.0, 0.0], [0.0, 1.0]])
    means = {"t": tf.mean(axis=0)}
    p = scorers.score("paper", feats, None, means)["t"]
    u = scorers.score("unitmean", feats, None, means, target_feats={"t": tf})["t"]
    assert p[0] > 0.99 and p[1] < 0.02
    np.testing.assert_allclose(u, [math.sqrt(0.5)] * 2, rtol=1e-12)


def test_knn_against_loop(data) -> None:
    feats, zero, means, _ = data
    neighbours, lam = 3, 0.4
    ok = _valid(feats, zero)
    rows = _rows(feats)
    m = _mean([rows[i] for i in ok])
    cen = {i: [a - b for a, b in zip(rows[i], m)] for i in ok}
    base = _naive_centred(feats, zero, means)
    nb = {}
    for i in ok:
        sims = sorted(((-_cos(cen[i], cen[j]), j) for j in ok if j != i))
        nb[i] = [j for _, j in sims[:neighbours]]
    ref = {t: [(1 - lam) * v[i] + lam * sum(v[j] for j in nb[i]) / neighbours if i in ok else float("nan")
               for i in range(len(rows))] for t, v in base.items()}
    got = scorers.score("knn", feats, zero, means, base="centred", neighbours=neighbours, lam=lam)
    _check(got, ref)
    idx = scorers.knn_neighbours(feats, zero, neighbours)
    for i in ok:
        assert list(idx[i]) == nb[i]
    assert (idx[4] == -1).all() and (idx[7] == -1).all()


def test_eb_shrinks_noisy_prompts_more() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    theta = rng.normal(0.0, 0.1, n)
    n1 = rng.integers(1, 8, n)  # K = 8
    v = scorers.noise_proxy(n1, 8)
    s = theta + rng.normal(0, 1, n) * np.sqrt(0.05 * v)
    shrunk, fit = scorers.eb_shrink(s, v)
    assert fit["sigma2"] == pytest.approx(0.05, rel=0.15)
    assert fit["tau2"] == pytest.approx(0.01, rel=0.25)
    factor = (shrunk - fit["mu"]) / (s - fit["mu"])
    ref = fit["tau2"] / (fit["tau2"] + fit["sigma2"] * v)
    np.testing.assert_allclose(factor, ref, rtol=1e-9)
    assert factor[v == v.max()].mean() < factor[v == v.min()].mean()
    # shrinkage helps: closer to the truth than the raw scores
    assert np.mean((shrunk - theta) ** 2) < np.mean((s - theta) ** 2)


def test_eb_scorer_and_noise_proxy(data) -> None:
    feats, zero, means, _ = data
    n1 = np.array([1, 2, 3, 4, 0, 5, 6, 7, 2])
    v = scorers.noise_proxy(n1, 8)
    assert v[0] == pytest.approx(1 + 1 / 7) and v[3] == pytest.approx(0.5) and np.isinf(v[4])
    got = scorers.score("eb", feats, zero, means, n_correct=n1, n_responses=8, base="paper")
    base = scorers.score("paper", feats, zero, means)
    for t in means:
        ref, _ = scorers.eb_shrink(base[t], v)
        np.testing.assert_allclose(got[t], ref, equal_nan=True)
        assert np.isnan(got[t][[4, 7]]).all()
    with pytest.raises(CropiError, match="reward counts"):
        scorers.score("eb", feats, zero, means)


def test_source_shrinkage_against_loop(data) -> None:
    feats, zero, means, _ = data
    src = ["x", "x", "y", "y", "x", "y", "z", "x", "x"]
    lam = 0.5
    base = _naive_paper(feats, zero, means)
    ref = {}
    for t, v in base.items():
        vals = []
        for i in range(len(src)):
            if math.isnan(v[i]):
                vals.append(float("nan"))
                continue
            peers = [v[j] for j in range(len(src)) if j != i and src[j] == src[i] and not math.isnan(v[j])]
            vals.append(v[i] if not peers else (1 - lam) * v[i] + lam * sum(peers) / len(peers))
        ref[t] = vals
    _check(scorers.score("source", feats, zero, means, sources=src, base="paper", lam=lam), ref)


def test_score_registry_errors(data) -> None:
    feats, zero, means, _ = data
    with pytest.raises(CropiError, match="unknown scorer"):
        scorers.score("nope", feats, zero, means)
    with pytest.raises(CropiError, match="no option"):
        scorers.score("paper", feats, zero, means, reduce="max")
    # context the scorer does not use is dropped silently
    got = scorers.score("paper", feats, zero, means, n_correct=np.ones(9), n_responses=8)
    assert np.array_equal(got["a"], cosine_scores(feats, means, zero)["a"], equal_nan=True)


# ------------------------------------------------------------------------------ planted case
def _planted(seed: int = 0):
    """A strong common direction c shared by every pool row and by both target means, plus small
    target-specific directions d1, d2 carried by 6 planted rows each (out of 60)."""
    rng = np.random.default_rng(seed)
    k = 64
    basis = np.linalg.qr(rng.standard_normal((k, 3)))[0].T
    c, d1, d2 = basis
    n = 60
    noise = 0.05 * rng.standard_normal((n, k))
    feats = np.tile(c, (n, 1)) + noise
    rel1, rel2 = np.arange(0, 6), np.arange(6, 12)
    feats[rel1] += 1.0 * d1
    feats[rel2] += 1.0 * d2
    means = {"v1": c + 0.3 * d1, "v2": c + 0.3 * d2}
    return feats, means, rel1, rel2


@pytest.mark.parametrize("name", ["centred", "differential"])
def test_planted_relevant_rows_ranked_first(name) -> None:
    feats, means, rel1, rel2 = _planted()
    s = scorers.score(name, feats, None, means)
    for t, rel in (("v1", rel1), ("v2", rel2)):
        top = np.argsort(-s[t], kind="stable")[:rel.size]
        assert set(top.tolist()) == set(rel.tolist()), (name, t, top)


def test_planted_paper_prefers_the_common_direction() -> None:
    feats, means, rel1, rel2 = _planted()
    s = scorers.score("paper", feats, None, means)
    for t, rel in (("v1", rel1), ("v2", rel2)):
        top = np.argsort(-s[t], kind="stable")[:rel.size]
        assert len(set(top.tolist()) & set(rel.tolist())) <= 1, top


def test_knn_keeps_planted_ranking_and_reduces_noise() -> None:
    # noisier planted rows: shrinking toward neighbours (the other planted rows) must not hurt
    feats, means, rel1, _ = _planted(1)
    rng = np.random.default_rng(5)
    feats = feats + 0.25 * rng.standard_normal(feats.shape)
    base = scorers.score("centred", feats, None, means)["v1"]
    sm = scorers.score("knn", feats, None, means, base="centred", neighbours=5, lam=0.5)["v1"]
    gap = lambda s: s[rel1].mean() - np.delete(s, rel1).mean()  # noqa: E731
    spread = lambda s: s[rel1].std()  # noqa: E731
    assert gap(sm) > 0.5 * gap(base) > 0
    assert spread(sm) < spread(base)


# ------------------------------------------------------------------------------------------- ESS
def test_ess_known_weights() -> None:
    k = 8
    assert scorers.ess(np.zeros(k)) == pytest.approx(1.0)
    assert scorers.ess(np.full(k, 123.4)) == pytest.approx(1.0)
    dom = np.full(k, -1e4)
    dom[3] = 0.0
    assert scorers.ess(dom) == pytest.approx(1 / k)
    # two equal weights, the rest negligible: ESS = 2
    two = np.full(k, -800.0)
    two[[1, 5]] = 50.0
    assert scorers.ess(two) == pytest.approx(2 / k)


def test_ess_matches_naive_and_is_stable() -> None:
    rng = np.random.default_rng(2)
    lw = rng.normal(0, 1.5, (5, 16))
    w = np.exp(lw)
    ref = w.sum(1) ** 2 / (16 * (w ** 2).sum(1))
    np.testing.assert_allclose(scorers.ess(lw), ref, rtol=1e-12)
    np.testing.assert_allclose(scorers.ess(lw + 5000.0), ref, rtol=1e-9)  # exp(5000) overflows
    assert np.all(np.isfinite(scorers.ess(lw - 5000.0)))
    ragged = lw.copy()
    ragged[0, 10:] = np.nan
    wr = np.exp(lw[0, :10])
    assert scorers.ess(ragged)[0] == pytest.approx(wr.sum() ** 2 / (10 * (wr ** 2).sum()))
    assert np.isnan(scorers.ess(np.full(4, np.nan)))


def test_sequence_logw() -> None:
    lw = scorers.sequence_logw([np.array([-1.0, -2.0]), np.array([-0.5])],
                               [np.array([-1.5, -2.0]), np.array([-0.25])])
    np.testing.assert_allclose(lw, [0.5, -0.25])



def test_config_accepts_exactly_the_registered_scorers() -> None:
    from cropi.api import make_config
    from cropi.influence.scorers import SCORERS
    from cropi.utils.errors import CropiError

    for name in SCORERS.names():
        assert make_config(sets={"score.scorer": name}).score.scorer == name
    with pytest.raises(CropiError, match="score.scorer.*use one of paper"):
        make_config(sets={"score.scorer": "nope"})
