"""Scores: float64 references against naive loops, NaN handling, Parquet (fusion: tests/select)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cropi.influence.scores import (
    cosine_scores,
    read_scores,
    score_table,
    target_mean,
    target_scores,
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
    got = cosine_scores(pool, means, zero_grad=zero)
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


def test_score_table_roundtrip(tmp_path: Path) -> None:
    ids = ["p0", "p1", "p2", "p3"]
    scores = {"gsm8k": np.array([0.2, np.nan, 0.9, 0.2]), "math": np.array([0.1, np.nan, 0.3, 0.5])}
    table = score_table(ids, scores, [0.5, 0.0, 0.25, 1.0], ["a", "b", "a", "c"], ["1", None, "2", "1"])
    assert table.column_names == ["id", "source", "level", "pass_rate", "zero_grad",
                                  "score_gsm8k", "score_math"]
    write_scores(tmp_path / "scores.parquet", table)
    back = read_scores(tmp_path / "scores.parquet")
    rows = back.to_pylist()
    assert [r["zero_grad"] for r in rows] == [False, True, False, False]
    assert rows[1]["level"] is None
    assert not list(tmp_path.glob(".tmp-*"))
    got = target_scores(back, ["p3", "p0", "p2", "p1"])  # aligned to any id order
    np.testing.assert_array_equal(got["math"][:3], [0.5, 0.1, 0.3])
    assert math.isnan(got["gsm8k"][3])
    with pytest.raises(CropiError, match="no row"):
        target_scores(back, ["p0", "zz"])
    with pytest.raises(ValueError, match="lengths"):
        score_table(ids[:3], scores, [0.5] * 4, ["a"] * 4, ["1"] * 4)
