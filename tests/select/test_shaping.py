"""Difficulty- and diversity-aware influence policies on hand-made pools."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from cropi.select import SelectionContext, get_policy, policy_fact, select_ids
from cropi.select.shaping import cluster_cap, kmeans, level_quota, mmr, resolve_options, window_at
from cropi.utils.errors import CropiError

N = 60


def make_ctx(**kw) -> SelectionContext:
    """Scores fall with the position (p000 best); levels L1/L2/L3 in blocks, so the plain top of
    the ranking is all L1; pass rates fall from 7/8 to 1/8 along the pool."""
    score = np.linspace(1.0, -1.0, N)
    base = dict(ids=[f"p{i:03d}" for i in range(N)], pass_rate=np.linspace(7, 1, N).round() / 8,
                fused=None, source=["a"] * N, level=[f"L{1 + i * 3 // N}" for i in range(N)],
                scores={"t": score}, seed=0)
    base.update(kw)
    return SelectionContext(**base)


def positions(ids: list[str]) -> list[int]:
    return [int(i[1:]) for i in ids]


def test_registered_with_facts_off_by_default() -> None:
    for name in ("influence-quota", "influence-window", "influence-mmr", "influence-cap",
                 "influence-window-mmr"):
        assert policy_fact(name, "needs_scores") and policy_fact(name, "uses_options")
    assert not policy_fact("influence", "uses_options")
    from cropi.config import SelectConfig

    assert SelectConfig().policy == "influence" and SelectConfig().options == {}


def test_level_quota_is_respected() -> None:
    ctx = make_ctx()
    plain = select_ids("influence", ctx, 9)
    assert {ctx.level[i] for i in positions(plain)} == {"L1"}
    got = select_ids("influence-quota", ctx, 9)
    assert Counter(ctx.level[i] for i in positions(got)) == {"L1": 3, "L2": 3, "L3": 3}
    assert positions(got) == sorted(positions(got))  # rank order; each level's best-ranked
    assert positions(got) == [0, 1, 2, 20, 21, 22, 40, 41, 42]
    ctx = make_ctx(options={"quota": {"L2": 2, "L3": 1}})
    got = select_ids("influence-quota", ctx, 9)
    assert Counter(ctx.level[i] for i in positions(got)) == {"L2": 6, "L3": 3}


def test_level_quota_shortage_goes_to_the_best_ranked_others() -> None:
    order = np.arange(10)
    levels = ["A"] * 8 + ["B"] * 2
    got = level_quota(order, levels, 6)
    assert Counter(levels[i] for i in got) == {"A": 4, "B": 2}
    got = level_quota(order, levels, 8, {"A": 1, "B": 3})  # B wants 6, has 2
    assert list(got) == [0, 1, 2, 3, 4, 5, 8, 9]


def test_pass_rate_window_moves_with_the_stage() -> None:
    opts = resolve_options({"window": [0.4, 0.6], "window_step": 0.2}, "window", None)
    assert window_at(opts, 0) == [0.4, 0.6]
    assert window_at(opts, 1) == pytest.approx([0.2, 0.4])
    assert window_at(opts, 5) == [0.0, 0.0]
    for stage, (lo, hi) in ((0, (0.4, 0.6)), (1, (0.2, 0.4))):
        ctx = make_ctx(options={"window": [0.4, 0.6], "window_step": 0.2}, stage=stage)
        got = positions(select_ids("influence-window", ctx, 6))
        assert all(lo - 1e-9 <= ctx.pass_rate[i] <= hi + 1e-9 for i in got)
        inside = [i for i in range(N) if lo - 1e-9 <= ctx.pass_rate[i] <= hi + 1e-9]
        assert got == inside[:6]


def test_window_reads_the_current_pass_rate_where_known() -> None:
    current = np.full(N, np.nan)
    current[:30] = 0.9  # the stage's policy now solves the (beta-)easy half
    ctx = make_ctx(options={"window": [0.45, 0.55]}, current_pass_rate=current)
    rate = np.where(np.isfinite(current), current, ctx.pass_rate)
    inside = [i for i in range(N) if 0.45 <= rate[i] <= 0.55]
    got = positions(select_ids("influence-window", ctx, 4))
    assert got == inside[:4] and min(got) >= 30
    beta = make_ctx(options={"window": [0.45, 0.55], "rate": "beta"}, current_pass_rate=current)
    got = positions(select_ids("influence-window", beta, 4))
    assert all(0.45 <= beta.pass_rate[i] <= 0.55 for i in got) and min(got) < 30


def test_window_too_narrow_fills_from_the_ranking(caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx(options={"window": [0.5, 0.5]})
    inside = [i for i in range(N) if ctx.pass_rate[i] == 0.5]
    got = positions(select_ids("influence-window", ctx, len(inside) + 3))
    assert got[:len(inside)] == inside and len(got) == len(inside) + 3
    assert "fill the rest" in caplog.text


def spread_pool() -> tuple[SelectionContext, np.ndarray]:
    """The 6 best-ranked prompts are near-duplicates (one direction); the others are spread."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((N, 8))
    emb[:6] = emb[0] + 0.01 * rng.standard_normal((6, 8))
    return make_ctx(embeddings=emb), emb


def min_pairwise_distance(v: np.ndarray) -> float:
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    return float(d[np.triu_indices(len(v), 1)].min())


def test_mmr_picks_a_spread_set_where_top_n_picks_near_duplicates() -> None:
    ctx, emb = spread_pool()
    plain = positions(select_ids("influence", ctx, 5))
    assert plain == [0, 1, 2, 3, 4] and min_pairwise_distance(emb[plain]) < 0.1
    got = positions(select_ids("influence-mmr", ctx, 5))
    assert got[0] == 0  # the best-ranked prompt first
    assert sum(i < 6 for i in got) == 1  # one of the near-duplicates, not five
    assert min_pairwise_distance(emb[got]) > 1.0
    assert all(i < 15 for i in got)  # from the top candidates x n of the ranking (3 x 5)


def test_mmr_lambda_one_is_the_plain_top_n() -> None:
    ctx, _ = spread_pool()
    ctx.options = {"mmr_lambda": 1.0}
    assert positions(select_ids("influence-mmr", ctx, 5)) == [0, 1, 2, 3, 4]
    assert list(mmr(np.arange(4), np.eye(4), 0, 0.5)) == []


def test_cluster_cap() -> None:
    rng = np.random.default_rng(1)
    emb = np.repeat(10 * np.eye(4), N // 4, axis=0) + 0.1 * rng.standard_normal((N, 4))
    # the ranking's top 32 (candidates 4 x 8) are three groups: 0-14, 15-29 and 30-31
    ctx = make_ctx(embeddings=emb, options={"clusters": 3, "cluster_cap": 0.375, "candidates": 4})
    picks, labels = cluster_cap(np.arange(32), emb, 8, 3, 0.375, seed=0)
    assert len(set(labels[:15])) == 1 and len(set(labels)) == 3
    got = positions(select_ids("influence-cap", ctx, 8))
    assert got == list(picks) == [0, 1, 2, 15, 16, 17, 30, 31]  # at most ceil(0.375 x 8) = 3 per cluster
    assert max(Counter(labels[i] for i in got).values()) <= math.ceil(0.375 * 8)
    assert positions(select_ids("influence", ctx, 8)) == list(range(8))
    assert len(set(kmeans(emb, 4, seed=0))) == 4


def test_gradient_space_reads_the_features() -> None:
    ctx, emb = spread_pool()
    ctx.options = {"space": "gradient"}
    with pytest.raises(CropiError, match="gradient vectors"):
        select_ids("influence-mmr", ctx, 5)
    ctx.features = emb
    assert positions(select_ids("influence-mmr", ctx, 5)) == \
        positions(select_ids("influence-mmr", make_ctx(embeddings=emb), 5))


def test_options_are_checked_and_resolved() -> None:
    pol = get_policy("influence-window-mmr")
    opts = pol.options({"window": [0.1, 0.5]})  # type: ignore[attr-defined]
    assert opts == {"window": [0.1, 0.5], "window_step": 0.0, "rate": "current", "mmr_lambda": 0.5,
                    "space": "embedding", "candidates": 3.0}
    with pytest.raises(CropiError, match="clusters"):
        pol.options({"clusters": 3})  # type: ignore[attr-defined]
    with pytest.raises(CropiError, match="window"):
        resolve_options({"window": [0.6, 0.1]}, "window", None)
    with pytest.raises(CropiError, match="space"):
        resolve_options({"space": "words"}, None, "mmr")
    with pytest.raises(CropiError, match="quota"):
        resolve_options({"quota": {"L1": 0}}, "quota", None)


def test_zero_gradient_prompts_are_never_picked() -> None:
    score = np.linspace(1.0, -1.0, N)
    score[:10] = np.nan
    ctx, emb = spread_pool()
    ctx.scores = {"t": score}
    for name in ("influence-quota", "influence-mmr", "influence-cap", "influence-window"):
        ctx.options = {"window": [0.0, 1.0]} if name == "influence-window" else {}
        assert all(i >= 10 for i in positions(select_ids(name, ctx, 6))), name


def test_context_checks_vector_lengths() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        make_ctx(embeddings=np.zeros((N - 1, 3)))
    with pytest.raises(ValueError, match="current_pass_rate"):
        make_ctx(current_pass_rate=np.zeros(N + 1))
