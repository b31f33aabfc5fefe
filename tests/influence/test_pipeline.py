"""Scoring pipeline invariances: sharded feature computation + merge equals one pass; micro-batch
size does not change features."""

from __future__ import annotations

import numpy as np
import torch

from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence.features import FeatureStore, merge_stores, shard_ids
from cropi.influence.params import select_params
from cropi.influence.pipeline import compute_features
from cropi.influence.projection import make_projector
from cropi.rollout.store import PromptRollouts


def _items(n: int = 6) -> list[PromptRollouts]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        resp = [torch.randint(3, 97, (int(m),), generator=g).tolist() for m in torch.randint(2, 7, (4,), generator=g)]
        rewards = np.array([1, 0, 0, 1] if i % 3 else [1, 1, 1, 1], np.float32)  # every third: zero signal
        old = [np.full(len(r), -3.0, np.float32) for r in resp]
        out.append(PromptRollouts(f"p{i}", "s", None, torch.randint(3, 97, (5,), generator=g).tolist(),
                                  resp, [""] * 4, rewards, old))
    return out


def _run(model, items, path, ids, cfg=GradientConfig()):
    params = select_params(model, cfg)
    proj = make_projector(ProjectionConfig(k=32, seed=3), params.dim)
    store = FeatureStore.open(path, ids, 32, "fp32", {"test": 1})
    compute_features(model, params, proj, [it for it in items if it.id in set(ids)], store, cfg, pad_id=0)
    return FeatureStore.load(path).read()


def test_sharded_scoring_equals_single_pass(small_lm, tmp_path):
    items = _items()
    ids = [it.id for it in items]
    _, single, zero = _run(small_lm, items, tmp_path / "one", ids)
    shards = []
    for s in range(2):
        part = shard_ids(ids, 2, s)
        _run(small_lm, items, tmp_path / f"shard{s}", part)
        shards.append(tmp_path / f"shard{s}")
    merged = merge_stores(shards, tmp_path / "merged", ids, {"test": 1})
    m_ids, m_feats, m_zero = merged.read()
    assert m_ids == ids
    assert np.array_equal(m_feats, single) and np.array_equal(m_zero, zero)
    assert zero.tolist() == [True, False, False, True, False, False]


def test_features_independent_of_micro_batch(small_lm, tmp_path):
    items = _items()
    ids = [it.id for it in items]
    _, a, _ = _run(small_lm, items, tmp_path / "a", ids, GradientConfig(max_batch_tokens=16))
    _, b, _ = _run(small_lm, items, tmp_path / "b", ids, GradientConfig(max_batch_tokens=4096))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
