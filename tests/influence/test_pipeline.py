"""Scoring pipeline invariances: sharded feature computation + merge equals one pass; micro-batch
size does not change features."""

from __future__ import annotations

import numpy as np
import torch

from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence.features import FeatureStore
from cropi.influence.shards import merge_stores, shard_ids
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


def _run(model, items, path, ids, cfg=GradientConfig(autocast_bf16=False)):
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
    _, a, _ = _run(small_lm, items, tmp_path / "a", ids, GradientConfig(max_batch_tokens=16, autocast_bf16=False))
    _, b, _ = _run(small_lm, items, tmp_path / "b", ids, GradientConfig(max_batch_tokens=4096, autocast_bf16=False))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_autocast_none_is_resolved_for_the_device_and_recorded(small_lm, monkeypatch) -> None:
    """``autocast_bf16: None`` becomes a bool in the setup and in the feature-store spec; an
    explicit value is kept; a resolved-on setup computes bf16-autocast features (close to fp32)."""
    import cropi.influence.popi as popi
    from cropi.influence.pipeline import prepare_scoring, prompt_feature

    proj = ProjectionConfig(k=64)
    for fast in (True, False):
        monkeypatch.setattr(popi, "bf16_is_fast", lambda device, fast=fast: fast)
        setup = prepare_scoring(small_lm, GradientConfig(), proj)
        assert setup.gradient.autocast_bf16 is fast and setup.spec["gradient"]["autocast_bf16"] is fast
        setup.release()
    setup = prepare_scoring(small_lm, GradientConfig(autocast_bf16=False), proj)  # fast=False still patched
    assert setup.spec["gradient"]["autocast_bf16"] is False
    item = _items()[1]
    a = prompt_feature(setup.model, setup.params, setup.projector, item, setup.gradient, pad_id=0)
    b = prompt_feature(setup.model, setup.params, setup.projector, item, GradientConfig(autocast_bf16=True), pad_id=0)
    setup.release()
    assert not np.array_equal(a, b)  # autocast really ran
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.99


def test_drift_of_a_resumed_store_equals_an_uninterrupted_one(small_lm, tmp_path) -> None:
    """``compute_features(drift=...)`` also measures the rows an earlier process stored, from the
    same gradient pass, so a resumed stage's measures equal an uninterrupted one's exactly, under
    bf16 autocast too (where a separate fp32 pass would differ by bf16 rounding)."""
    from cropi.influence.pipeline import prepare_scoring

    items = _items()
    ids = [it.id for it in items]
    setup = prepare_scoring(small_lm, GradientConfig(autocast_bf16=True), ProjectionConfig(k=32, seed=3))

    def score(path, drift, rows=0, feats=None, zero=None):
        store = FeatureStore.open(path, ids, 32, "fp32", {"test": 1})
        if rows:  # what an earlier, killed process had stored
            store.write(ids[:rows], feats[:rows], list(zero[:rows]))
            store = FeatureStore.open(path, ids, 32, "fp32", {"test": 1})
        compute_features(setup.model, setup.params, setup.projector, items, store, setup.gradient, pad_id=0,
                         drift=drift)
        return FeatureStore.load(path).read()

    full: dict = {}
    _, feats, zero = score(tmp_path / "a", full)
    resumed: dict = {}
    _, feats_b, _ = score(tmp_path / "b", resumed, rows=4, feats=feats, zero=zero)
    assert sorted(full) == [i for i, z in zip(ids, zero) if not z] and len(full) == 4
    assert resumed == full  # the stored rows' measures too, bit for bit
    assert np.array_equal(feats_b, feats)
