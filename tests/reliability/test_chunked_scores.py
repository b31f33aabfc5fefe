"""Pools past memory (issue 23, deliverable 5): the feature stores are read in chunks for scoring,
with the same numbers as the whole-matrix path (benchmarks/pool_scale.py measures the memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropi.influence.features import READ_ROWS, FeatureStore
from cropi.influence.scorers import score
from cropi.influence.scores import store_cosine_scores, store_target_mean, target_mean
from cropi.select import rank_order


def _store(path: Path, n: int, k: int, seed: int, zero_every: int = 7) -> FeatureStore:
    rng = np.random.default_rng(seed)
    ids = [f"{path.name}{i}" for i in range(n)]
    store = FeatureStore.open(path, ids, k, "fp16", {"seed": seed})
    for start in range(0, n, 1000):
        b = min(1000, n - start)
        store.write(ids[start:start + b], rng.normal(size=(b, k)) + 0.3,
                    [(start + i) % zero_every == 0 for i in range(b)])
    store.finalize()
    return FeatureStore.load(path)


def test_chunked_scores_are_the_whole_matrix_scores(tmp_path: Path) -> None:
    n = 2 * READ_ROWS + 123  # chunks end inside the pool
    pool = _store(tmp_path / "pool", n, 24, 0)
    targets = {t: _store(tmp_path / t, 300, 24, s, zero_every=3) for t, s in (("a", 1), ("b", 2))}
    whole_means, chunked_means = {}, {}
    for t, store in targets.items():
        ids, feats, zero = store.read()
        mean, used = target_mean(feats, zero, ids, max_n=100, seed=5)
        got, got_used, rows = store_target_mean(store, max_n=100, seed=5)
        assert got_used == used and np.array_equal(got, mean)  # bit-identical, the same draw
        assert np.array_equal(rows, feats[[ids.index(i) for i in used]].astype(np.float64))
        whole_means[t], chunked_means[t] = mean, got
    _, feats, zero = pool.read()
    whole = score("paper", feats, zero, whole_means)
    chunked = store_cosine_scores(pool, chunked_means)
    for t in whole:
        assert np.array_equal(whole[t], chunked[t], equal_nan=True)
    assert np.isnan(chunked["a"][::7]).all()  # zero-gradient rows
    budget = n // 10
    assert np.array_equal(rank_order(whole, budget, "rrf"), rank_order(chunked, budget, "rrf"))


def test_chunks_read_the_file_not_a_map(tmp_path: Path) -> None:
    pool = _store(tmp_path / "pool", READ_ROWS + 5, 8, 3)
    sizes = [(start, len(rows), rows.dtype) for start, rows, _ in pool.chunks()]
    assert sizes == [(0, READ_ROWS, np.float32), (READ_ROWS, 5, np.float32)]
    raw = next(pool.chunks(raw=True))[1]
    assert raw.dtype == np.float16 and np.array_equal(raw, pool.features[:READ_ROWS])
