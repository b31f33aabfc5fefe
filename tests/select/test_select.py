"""Selection policies, budget, statistics and selection.json."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cropi.select import (
    SelectionContext,
    available_policies,
    budget,
    get_policy,
    read_selection,
    register_policy,
    select_ids,
    selection_stats,
    write_selection,
)
from cropi.utils.errors import CropiError

N = 60


def make_ctx(seed: int = 0, fused: bool = True) -> SelectionContext:
    rng = np.random.default_rng(123)
    pass_rate = rng.integers(0, 9, size=N) / 8  # K = 8 responses: p in {0, 1/8, ..., 1}
    scores = rng.standard_normal(N)
    scores[pass_rate == 0] = np.nan  # all rewards equal -> zero gradient
    scores[pass_rate == 1] = np.nan
    return SelectionContext(
        ids=[f"p{i:03d}" for i in range(N)],
        pass_rate=pass_rate,
        fused=scores if fused else None,
        source=["arith" if i % 3 else "logic" for i in range(N)],
        level=[None if i % 5 == 0 else str(i % 2) for i in range(N)],
        seed=seed,
    )


def pos(ctx: SelectionContext, ids: list[str]) -> np.ndarray:
    return np.array([ctx.ids.index(i) for i in ids])


def test_registry() -> None:
    assert available_policies()[:5] == ["influence", "random", "pass-rate", "learnability", "full"]
    assert get_policy("random").name == "random"
    with pytest.raises(CropiError, match="already registered"):
        register_policy(get_policy("random"))
    with pytest.raises(CropiError, match="influence, random"):
        get_policy("nope")


@pytest.mark.parametrize("n_pool,ratio,expected", [(100, 0.1, 10), (5, 0.1, 1), (3, 0.01, 1),
                                                   (55, 0.1, 6), (25, 0.1, 2), (7, 1.0, 7)])
def test_budget(n_pool: int, ratio: float, expected: int) -> None:
    assert budget(n_pool, ratio) == expected


def test_budget_errors() -> None:
    with pytest.raises(CropiError):
        budget(0, 0.1)
    with pytest.raises(CropiError):
        budget(10, 0.0)


def test_influence_orders_by_score_and_skips_nan() -> None:
    ctx = make_ctx()
    got = select_ids("influence", ctx, 10)
    assert ctx.fused is not None
    values = ctx.fused[pos(ctx, got)]
    assert np.isfinite(values).all() and list(values) == sorted(values, reverse=True)
    finite = np.sort(ctx.fused[np.isfinite(ctx.fused)])[::-1]
    np.testing.assert_array_equal(values, finite[:10])


def test_influence_ties_by_position_and_short_pool(caplog: pytest.LogCaptureFixture) -> None:
    ctx = SelectionContext(ids=list("abcde"), pass_rate=np.full(5, 0.5),
                           fused=np.array([0.1, np.nan, 0.3, 0.1, np.nan]), source=["s"] * 5,
                           level=[None] * 5)
    with caplog.at_level(logging.WARNING):
        assert select_ids("influence", ctx, 4) == ["c", "a", "d"]
    assert "only 3" in caplog.text
    with pytest.raises(CropiError, match="influence scores"):
        select_ids("influence", make_ctx(fused=False), 3)


def test_random_is_seeded_uniform_without_replacement() -> None:
    a = select_ids("random", make_ctx(seed=1), 12)
    assert a == select_ids("random", make_ctx(seed=1), 12)
    assert a != select_ids("random", make_ctx(seed=2), 12)
    assert len(set(a)) == 12
    # uniform: over many seeds every prompt is drawn about equally often
    counts = np.zeros(N)
    for seed in range(300):
        counts[pos(make_ctx(seed=seed), select_ids("random", make_ctx(seed=seed), 12))] += 1
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()


def test_pass_rate_never_picks_solved_or_unsolved() -> None:
    ctx = make_ctx(seed=3)
    eligible = int(((ctx.pass_rate > 0) & (ctx.pass_rate < 1)).sum())
    for seed in range(20):
        got = select_ids("pass-rate", make_ctx(seed=seed), 15)
        p = ctx.pass_rate[pos(ctx, got)]
        assert len(got) == 15 and ((p > 0) & (p < 1)).all()
    assert select_ids("pass-rate", ctx, 10) == select_ids("pass-rate", make_ctx(seed=3), 10)
    assert len(select_ids("pass-rate", ctx, N)) == eligible < N


def test_learnability_top_p_one_minus_p_with_seeded_ties() -> None:
    ctx = make_ctx(seed=0)
    got = select_ids("learnability", ctx, 20)
    p = ctx.pass_rate[pos(ctx, got)]
    learn = p * (1 - p)
    assert list(learn) == sorted(learn, reverse=True)
    all_learn = np.sort(ctx.pass_rate * (1 - ctx.pass_rate))[::-1]
    np.testing.assert_array_equal(learn, all_learn[:20])
    assert got == select_ids("learnability", make_ctx(seed=0), 20)
    others = [select_ids("learnability", make_ctx(seed=s), 20) for s in range(1, 6)]
    assert any(o != got for o in others)  # ties (equal p) broken differently by seed


def test_full_returns_everything_in_order() -> None:
    ctx = make_ctx()
    assert select_ids("full", ctx, 3) == ctx.ids


def test_stats_sums_and_overlap() -> None:
    ctx = make_ctx()
    selected = select_ids("influence", ctx, 12)
    previous = select_ids("random", ctx, 10)
    stats = selection_stats(ctx, selected, previous)
    assert stats["n_pool"] == N and stats["n_selected"] == 12
    assert ctx.fused is not None
    assert stats["n_zero_grad"] == int(np.isnan(ctx.fused).sum()) > 0
    for mix in ("source_mix", "level_mix"):
        assert sum(stats[mix]["pool"].values()) == N
        assert sum(stats[mix]["selected"].values()) == 12
    assert "none" in stats["level_mix"]["pool"]
    hist = stats["pass_rate"]
    assert len(hist["edges"]) == 11 and sum(hist["pool"]) == N and sum(hist["selected"]) == 12
    score = stats["score"]
    assert len(score["edges"]) == 21
    assert sum(score["pool"]) == int(np.isfinite(ctx.fused).sum()) and sum(score["selected"]) == 12
    common = len(set(selected) & set(previous))
    assert stats["overlap_previous"]["fraction"] == pytest.approx(common / 12)
    assert selection_stats(ctx, selected, None)["overlap_previous"] is None
    assert selection_stats(ctx, selected, selected)["overlap_previous"]["fraction"] == 1.0
    unscored = selection_stats(make_ctx(fused=False), selected[:3])
    assert unscored["score"] is None and unscored["n_zero_grad"] is None
    with pytest.raises(CropiError, match="not in the pool"):
        selection_stats(ctx, ["zzz"])


def test_write_read_selection(tmp_path: Path) -> None:
    ctx = make_ctx()
    n = budget(len(ctx), 0.1)
    ids = select_ids("influence", ctx, n)
    stats = selection_stats(ctx, ids, None)
    write_selection(tmp_path / "selection.json", "influence", n, ids, stats)
    data = read_selection(tmp_path / "selection.json")
    assert data["ids"] == ids and data["policy"] == "influence" and data["budget"] == n
    assert data["stats"] == json.loads(json.dumps(stats))
    (tmp_path / "bad.json").write_text('{"policy": "x"}')
    with pytest.raises(CropiError, match="budget"):
        read_selection(tmp_path / "bad.json")
    with pytest.raises(CropiError, match="does not exist"):
        read_selection(tmp_path / "missing.json")


def test_select_does_not_import_influence_or_torch() -> None:
    code = ("import sys, cropi.select; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('cropi.influence')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
