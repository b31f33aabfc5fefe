"""Fusion at selection time: RRF by hand, ties, NaN handling, the full ranking's secondary key,
and a selection at another ratio than the one scoring assumed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cropi.select import SelectionContext, fuse, order_desc, rank_order, select_ids
from cropi.utils.errors import CropiError


def test_rrf_hand_computed() -> None:
    # positions:   0    1    2    3    4     5
    a = np.array([0.9, 0.1, 0.8, 0.7, np.nan, 0.2])  # top-3: 0 (1), 2 (2), 3 (3)
    b = np.array([0.1, 0.9, 0.7, 0.8, np.nan, 0.3])  # top-3: 1 (1), 3 (2), 2 (3)
    fused = fuse({"a": a, "b": b}, n_select=3)
    expected = [1.0, 1.0, 1 / 2 + 1 / 3, 1 / 3 + 1 / 2, np.nan, 0.0]
    np.testing.assert_allclose(fused, expected)


def test_rrf_ties_broken_by_position() -> None:
    a = np.array([0.5, 0.9, 0.5, 0.5])  # ranks: 1 -> 1, then ties 0, 2, 3 in position order
    fused = fuse({"a": a}, n_select=3)
    np.testing.assert_allclose(fused, [1 / 2, 1.0, 1 / 3, 0.0])
    np.testing.assert_array_equal(order_desc(np.array([0.5, np.nan, 0.9, 0.5])), [2, 0, 3])


def test_rrf_naive_reference_random() -> None:
    rng = np.random.default_rng(5)
    scores = {t: rng.standard_normal(40) for t in "abc"}
    nan_rows = [3, 17]
    for s in scores.values():
        s[nan_rows] = np.nan
    got = fuse(scores, n_select=8)
    ref = [0.0] * 40
    for s in scores.values():
        valid = sorted((i for i in range(40) if not math.isnan(s[i])), key=lambda i: (-s[i], i))
        for rank, i in enumerate(valid[:8], start=1):
            ref[i] += 1 / rank
    for i in nan_rows:
        ref[i] = float("nan")
    np.testing.assert_allclose(got, ref)


def test_max_mean_fusion() -> None:
    a = np.array([0.1, 0.5, np.nan])
    b = np.array([0.3, -0.5, np.nan])
    np.testing.assert_allclose(fuse({"a": a, "b": b}, 1, "max"), [0.3, 0.5, np.nan])
    np.testing.assert_allclose(fuse({"a": a, "b": b}, 1, "mean"), [0.2, 0.0, np.nan])
    with pytest.raises(CropiError, match="rrf, max or mean"):
        fuse({"a": a}, 1, "median")


def test_rank_order_orders_prompts_outside_every_top_list() -> None:
    # positions:   0     1     2     3     4
    a = np.array([0.90, 0.80, 0.10, 0.70, 0.20])  # full ranks: 0:1 1:2 3:3 4:4 2:5
    b = np.array([0.85, 0.10, 0.20, 0.80, 0.90])  # full ranks: 4:1 0:2 3:3 2:4 1:5
    # N = 1: top lists {0} and {4}: fused 0 -> 1, 4 -> 1, the rest 0, ordered by the full
    # rankings' reciprocal-rank sums: 1: 1/2 + 1/5 = 0.70, 3: 1/3 + 1/3 = 0.67, 2: 1/5 + 1/4 = 0.45
    order = rank_order({"a": a, "b": b}, 1)
    assert order.tolist() == [0, 4, 1, 3, 2]
    fused = fuse({"a": a, "b": b}, 1)
    assert fused[1] == fused[3] == fused[2] == 0.0
    # both targets rank 3 above 2, so 3 is printed above 2 although both have fused score 0
    assert order.tolist().index(3) < order.tolist().index(2)


def test_rank_order_skips_nan_and_other_fusions_break_ties_by_position() -> None:
    a = np.array([0.5, np.nan, 0.5, 0.9])
    assert rank_order({"a": a}, 2, "max").tolist() == [3, 0, 2]
    assert rank_order({"a": a}, 2, "rrf").tolist() == [3, 0, 2]


def test_influence_selection_fuses_for_its_own_budget() -> None:
    """Scoring does not fix the budget: a selection at 0.25 of 8 prompts (N = 2) takes each
    target's top 2, not the top 1 a 0.10 budget would fuse, and never fills picks in pool order."""
    # positions:   0     1     2     3     4     5     6     7
    a = np.array([0.10, 0.90, 0.20, 0.80, 0.30, 0.05, 0.40, 0.00])
    b = np.array([0.90, 0.10, 0.80, 0.20, 0.30, 0.05, 0.40, 0.00])
    ctx = SelectionContext(ids=[f"p{i}" for i in range(8)], pass_rate=np.full(8, 0.5), fused=None,
                           source=["s"] * 8, level=[None] * 8, scores={"a": a, "b": b})
    # N = 1 (ratio 0.10 of 8 -> round(0.8) = 1): tops p1 (a) and p0 (b), tie at 1 -> position
    assert select_ids("influence", ctx, 1) == ["p0"]
    # N = 2: a's top 2 = p1 (1), p3 (1/2); b's = p0 (1), p2 (1/2); ties by position
    assert select_ids("influence", ctx, 2) == ["p0", "p1"]
    # N = 4: a's top 4 = p1 p3 p6 p4, b's = p0 p2 p6 p4 -> p6 = 1/3 + 1/3 beats p2 = p3 = 1/2
    assert select_ids("influence", ctx, 4) == ["p0", "p1", "p6", "p2"]
    # N = 5: a's top 5: p1 p3 p6 p4 p2; b's: p0 p2 p6 p4 p3 -> p6 = 2/3, p4 = 1/2, p2 = 1/2 + 1/5
    assert select_ids("influence", ctx, 5) == ["p0", "p1", "p2", "p3", "p6"]
    hand = {"p0": 1.0, "p1": 1.0, "p2": 0.5 + 0.2, "p3": 0.5 + 0.2, "p6": 2 / 3, "p4": 0.5}
    fused = ctx.fused_scores(5)
    assert fused is not None
    for i, value in hand.items():
        assert fused[int(i[1:])] == pytest.approx(value)


def test_influence_needs_scores() -> None:
    ctx = SelectionContext(ids=["a"], pass_rate=[0.5], fused=None, source=["s"], level=[None])
    with pytest.raises(CropiError, match="influence scores"):
        select_ids("influence", ctx, 1)


def test_math_import_used() -> None:
    assert math.isnan(fuse({"a": np.array([np.nan])}, 1)[0])
