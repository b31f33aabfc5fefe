"""What the selection picks: the selection compared with the prompts with a gradient and the pool,
on hand-made pools with known entropies, a planted similar subset and ordinal levels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cropi.select import SelectionContext, selection_stats
from cropi.select.analysis import (PromptMeasures, compare, gradient_positions, ordinal_levels,
                                   selection_analysis, similarity_to_targets)

N = 200


def pass_rates() -> np.ndarray:
    """Half the pool with mixed rewards (a gradient), a quarter all wrong, a quarter all right."""
    p = np.zeros(N)
    p[:100] = np.tile([1, 2, 3, 4, 5, 6, 7], 15)[:100] / 8
    p[150:] = 1.0
    return p


def ctx_for(levels: list[str | None] | None = None) -> SelectionContext:
    return SelectionContext(ids=[f"p{i:03d}" for i in range(N)], pass_rate=pass_rates(), fused=None,
                            source=["a"] * N, level=levels or [None] * N, seed=3)


def test_known_entropies_low_selection_differs_from_gradient_prompts() -> None:
    rng = np.random.default_rng(0)
    entropy = 1.0 + 0.1 * rng.standard_normal(N)
    picked = np.arange(0, 100, 10)  # 10 prompts with a gradient ...
    entropy[picked] = 0.5  # ... and a known, low entropy
    res = compare(entropy, picked, gradient_positions(pass_rates()), seed=1)
    assert res is not None
    assert res["selected"] == pytest.approx(0.5)
    assert res["diff"] == pytest.approx(0.5 - entropy[:100].mean())
    assert res["diff_hi"] < 0 and res["p"] < 0.01  # far outside what random picks reach
    assert res["random_lo"] > 0.8  # 10 random picks from the gradient prompts: mean near 0.95
    # the difference's interval is the random picks' range inverted around the difference
    assert res["diff_lo"] == pytest.approx(res["diff"] - (res["random_hi"] - res["group"]))
    assert res["diff_hi"] == pytest.approx(res["diff"] - (res["random_lo"] - res["group"]))
    assert res["selected_lo"] == res["selected_hi"] == pytest.approx(0.5)  # bootstrap of equal values
    assert res["n_selected"] == 10 and res["n_group"] == 100


def test_a_random_pick_is_not_called_different() -> None:
    rng = np.random.default_rng(1)
    entropy = 1.0 + 0.1 * rng.standard_normal(N)
    picked = np.random.default_rng(2).choice(100, 10, replace=False)
    res = compare(entropy, picked, gradient_positions(pass_rates()), seed=1)
    assert res is not None and res["p"] > 0.05
    assert res["random_lo"] <= res["selected"] <= res["random_hi"]
    assert res["diff_lo"] < 0 < res["diff_hi"]  # interval and p-value agree


def test_nan_values_are_left_out_and_empty_groups_give_none() -> None:
    values = np.full(N, np.nan)
    assert compare(values, np.arange(5), np.arange(N)) is None
    values[:50] = 2.0
    res = compare(values, np.arange(45, 55), np.arange(N))
    assert res is not None and res["n_selected"] == 5 and res["n_group"] == 50 and res["selected"] == 2.0


def test_planted_similar_subset_is_found_in_embedding_space() -> None:
    rng = np.random.default_rng(0)
    d = 16
    pool = rng.standard_normal((N, d)) + 5.0  # a common offset, as hidden states have
    direction = rng.standard_normal(d)
    planted = np.arange(0, 100, 5)  # 20 prompts with a gradient, close to the target's topic
    pool[planted] = 5.0 + 3 * direction + 0.3 * rng.standard_normal((planted.size, d))
    target = 5.0 + 3 * direction + 0.3 * rng.standard_normal((12, d))
    sims = similarity_to_targets(pool, {"t": target})["t"]
    assert sims[planted].min() > np.delete(sims, planted).max()
    ctx = ctx_for()
    measures = PromptMeasures()
    measures.add("similarity_embedding/t", sims)
    ids = [ctx.ids[i] for i in planted[:10]]
    stats = selection_stats(ctx, ids, measures=measures)
    row = stats["analysis"]["measures"]["similarity_embedding/t"]
    assert row["gradient"]["diff_lo"] > 0 and row["gradient"]["p"] < 0.01
    assert row["pool"]["diff_lo"] > 0 and row["pool"]["p"] < 0.01
    # uncentred, every cosine is near 1 (the common offset): centring is what separates them
    raw = similarity_to_targets(pool, {"t": target}, centre=False)["t"]
    assert np.delete(raw, planted).min() > 0.75


def test_ordinal_levels() -> None:
    got = ordinal_levels(["L1", "L3", None, "d2", "10"])
    assert got is not None
    np.testing.assert_array_equal(got[[0, 1, 3, 4]], [1, 3, 2, 10])
    assert np.isnan(got[2])
    assert ordinal_levels(["easy", "L2"]) is None  # categorical labels are not an order
    assert ordinal_levels([None, None]) is None


def test_levels_and_pass_rate_in_selection_stats() -> None:
    levels = [f"d{1 + i % 4}" for i in range(N)]
    ctx = ctx_for(levels)
    hard = [i for i in range(100) if levels[i] == "d4"][:10]
    stats = selection_stats(ctx, [ctx.ids[i] for i in hard], measures=PromptMeasures())
    analysis = stats["analysis"]
    level = analysis["measures"]["level"]
    assert level["gradient"]["selected"] == 4.0 and level["gradient"]["group"] == pytest.approx(2.5, abs=0.05)
    assert level["gradient"]["p"] < 0.01
    pr = analysis["measures"]["pass_rate_beta"]
    # against the whole pool the pass rate differs by construction; the gradient group is the fair one
    assert pr["pool"]["group"] == pytest.approx(pass_rates().mean())
    assert pr["gradient"]["group"] == pytest.approx(pass_rates()[:100].mean())
    assert analysis["n_gradient"] == 100 and analysis["n_pool"] == N
    assert "level" in analysis["definitions"] and "permutation" in analysis["method"]
    json.dumps(stats, allow_nan=False)  # plain JSON values, no NaN


def test_no_measures_no_analysis_and_bad_shapes_refused() -> None:
    ctx = ctx_for()
    assert "analysis" not in selection_stats(ctx, ctx.ids[:3])
    m = PromptMeasures()
    m.add("entropy_beta", np.ones(N - 1))
    with pytest.raises(ValueError, match="entropy_beta"):
        selection_analysis(pass_rates(), np.arange(3), m)


def test_analysis_is_seeded() -> None:
    ctx = ctx_for()
    m = PromptMeasures()
    m.add("entropy_beta", np.random.default_rng(5).random(N))
    a = selection_stats(ctx, ctx.ids[:10], measures=m)
    b = selection_stats(ctx, ctx.ids[:10], measures=m)
    assert a == b
