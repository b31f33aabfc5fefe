"""Scores: float64 references against naive loops, RRF by hand, ties, NaN handling, Parquet."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cropi.influence.scores import (
    cosine_scores,
    fuse,
    order_desc,
    read_scores,
    score_table,
    target_mean,
    write_scores,
)
from cropi.utils.errors import CropiError


def test_target_mean_all_when_few() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((7, 5)).astype(np.float32)
    zero = np.array([0, 1, 0, 0, 1, 0, 0], dtype=bool)
    feats[zero] = 0
    ids = [f"t{i}" for i in range(7)]
    mean, used = target_mean(feats, zero, ids, max_n=100)
    assert used == ["t0", "t2", "t3", "t5", "t6"]
    ref = [sum(float(feats[i, j]) for i in (0, 2, 3, 5, 6)) / 5 for j in range(5)]
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, ref, rtol=1e-12)


def test_target_mean_sample_is_seeded_and_ordered() -> None:
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((50, 4)).astype(np.float32)
    zero = np.zeros(50, dtype=bool)
    zero[::7] = True
    ids = [f"t{i}" for i in range(50)]
    m1, used1 = target_mean(feats, zero, ids, max_n=10, seed=3)
    m2, used2 = target_mean(feats, zero, ids, max_n=10, seed=3)
    _, used3 = target_mean(feats, zero, ids, max_n=10, seed=4)
    assert used1 == used2 and used1 != used3 and len(used1) == 10
    positions = [ids.index(i) for i in used1]
    assert positions == sorted(positions) and not any(zero[positions])
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose(m1, feats[positions].astype(np.float64).mean(axis=0))


def test_target_mean_all_zero_raises() -> None:
    with pytest.raises(CropiError, match="all target rewards are equal.*k_target"):
        target_mean(np.zeros((3, 4)), np.ones(3, dtype=bool), ["a", "b", "c"], name="math")


def test_cosine_matches_naive_loop_and_nan_rows() -> None:
    rng = np.random.default_rng(2)
    pool = rng.standard_normal((9, 6)).astype(np.float16)
    pool[4] = 0
    zero = np.zeros(9, dtype=bool)
    zero[7] = True
    means = {"a": rng.standard_normal(6), "b": rng.standard_normal(6)}
    got = cosine_scores(pool, means, zero_mask=zero)
    for name, mean in means.items():
        assert got[name].dtype == np.float64
        for i in range(9):
            if i in (4, 7):
                assert math.isnan(got[name][i])
                continue
            row = [float(x) for x in pool[i]]
            dot = sum(x * y for x, y in zip(row, mean))
            norm = math.sqrt(sum(x * x for x in row)) * math.sqrt(sum(y * y for y in mean))
            assert got[name][i] == pytest.approx(dot / norm, rel=1e-12)


def test_cosine_zero_target_mean_raises() -> None:
    with pytest.raises(CropiError, match="zero"):
        cosine_scores(np.ones((2, 3)), {"t": np.zeros(3)})


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


def test_score_table_roundtrip(tmp_path: Path) -> None:
    ids = ["p0", "p1", "p2", "p3"]
    scores = {"gsm8k": np.array([0.2, np.nan, 0.9, 0.2]), "math": np.array([0.1, np.nan, 0.3, 0.5])}
    fused = fuse(scores, n_select=2)
    table = score_table(ids, scores, fused, [0.5, 0.0, 0.25, 1.0], ["a", "b", "a", "c"],
                        ["1", None, "2", "1"])
    assert table.column_names == ["id", "source", "level", "pass_rate", "zero_grad",
                                  "score_gsm8k", "score_math", "fused", "rank"]
    write_scores(tmp_path / "scores.parquet", table)
    rows = read_scores(tmp_path / "scores.parquet").to_pylist()
    assert [r["zero_grad"] for r in rows] == [False, True, False, False]
    # gsm8k top-2: p2, p0 (p0 beats p3 in the 0.2 tie by position); math top-2: p3, p2
    # fused: p2 = 1 + 1/2, p3 = 1, p0 = 1/2
    assert [r["rank"] for r in rows] == [3, None, 1, 2]
    assert rows[1]["level"] is None and math.isnan(rows[1]["fused"])
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="lengths"):
        score_table(ids[:3], scores, fused, [0.5] * 4, ["a"] * 4, ["1"] * 4)
