"""cropi.influence.group_sums: POPI features of binary-reward prompts rebuilt from group sums,
against float64 loops over per-response vectors, and the group backward against popi_backward."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from cropi.config import GradientConfig
from cropi.influence.group_sums import (binary_advantages, group_backward, half_features, popi_feature,
                                        pooled_features)
from cropi.influence.popi import popi_backward
from cropi.rollout.store import PromptRollouts


def _ref_feature(vectors: list[np.ndarray], rewards: list[float]) -> np.ndarray:
    """g = -(1/m) sum_k A_k G_k, A_k = (R_k - mean) / (unbiased std + 1e-4), one response at a time."""
    m = len(rewards)
    if len(set(rewards)) < 2:
        return np.zeros_like(vectors[0])
    mu, sd = statistics.fmean(rewards), statistics.stdev(rewards)
    out = np.zeros_like(vectors[0])
    for v, r in zip(vectors, rewards):
        out += (r - mu) / (sd + 1e-4) * v
    return -out / m


def _groups(vectors: np.ndarray, rewards: np.ndarray, half: int) -> np.ndarray:
    """[n, 4, d]: S_{A,1}, S_{A,0}, S_{B,1}, S_{B,0}, summed one response at a time."""
    n, k, d = vectors.shape
    out = np.zeros((n, 4, d))
    for i in range(n):
        for j in range(k):
            h = 0 if j < half else 1
            out[i, 2 * h + (0 if rewards[i, j] == 1 else 1)] += vectors[i, j]
    return out


REWARDS = np.array([[1, 0, 0, 1, 1, 1, 0, 1],
                    [1, 1, 1, 1, 0, 0, 0, 0],   # half A all correct, half B all wrong
                    [0, 0, 0, 0, 0, 0, 0, 0],   # no signal
                    [0, 1, 0, 0, 1, 1, 1, 1]], dtype=np.float64)


def test_binary_advantages() -> None:
    for r in ([1, 0, 0, 1, 1], [0, 1], [1, 1, 1, 0]):
        mu, sd = statistics.fmean(r), statistics.stdev(r)
        a1, a0 = binary_advantages(np.array(r, dtype=np.float64))
        assert a1 == pytest.approx((1 - mu) / (sd + 1e-4), rel=1e-14)
        assert a0 == pytest.approx((0 - mu) / (sd + 1e-4), rel=1e-14)
    assert binary_advantages(np.ones(4)) == (0.0, 0.0)
    assert binary_advantages(np.ones(1)) == (0.0, 0.0)


def test_features_of_halves_all_and_pooled_draws() -> None:
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((4, 8, 5))
    groups = _groups(vec, REWARDS, 4)
    s1, s0 = groups[0, 0] + groups[0, 2], groups[0, 1] + groups[0, 3]
    np.testing.assert_allclose(popi_feature(s1, s0, REWARDS[0]),
                               _ref_feature(list(vec[0]), REWARDS[0].tolist()), rtol=1e-12, atol=1e-14)
    feats = half_features(groups, REWARDS, 4)
    for i in range(4):
        for key, sl in (("A", slice(0, 4)), ("B", slice(4, None)), ("full", slice(None))):
            ref = _ref_feature(list(vec[i, sl]), REWARDS[i, sl].tolist())
            np.testing.assert_allclose(feats[key][i], ref, rtol=1e-12, atol=1e-14)
    assert not feats["A"][1].any() and not feats["B"][1].any() and feats["full"][1].any()
    assert not feats["full"][2].any()
    # two independent draws pooled: 16 responses per prompt, advantages over all of them
    vec2 = rng.standard_normal((4, 8, 5))
    rew2 = REWARDS[::-1].copy()
    pooled = pooled_features([groups, _groups(vec2, rew2, 4)], [REWARDS, rew2])
    for i in range(4):
        ref = _ref_feature(list(vec[i]) + list(vec2[i]), REWARDS[i].tolist() + rew2[i].tolist())
        np.testing.assert_allclose(pooled[i], ref, rtol=1e-12, atol=1e-14)


def test_group_sums_rebuild_popi_backward(small_lm) -> None:
    """-(1/K) (A_1 S_1 + A_0 S_0) from two group backwards = popi_backward on the packed path."""
    g = torch.Generator().manual_seed(3)
    k = 6
    prompt = torch.randint(3, 97, (7,), generator=g).tolist()
    resp = [torch.randint(3, 97, (int(n),), generator=g).tolist() for n in torch.randint(2, 9, (k,), generator=g)]
    old = [np.asarray(torch.randn(len(r), generator=g) * 0.1 - 3.0, dtype=np.float32) for r in resp]
    rewards = np.array([1, 0, 1, 1, 0, 0], dtype=np.float32)
    item = PromptRollouts("p", "s", None, prompt, resp, [""] * k, rewards, old)
    cfg = GradientConfig(autocast_bf16=False, max_batch_tokens=40)  # several micro-batches

    def grads() -> list[torch.Tensor]:
        out = [p.grad.detach().double().clone() for p in small_lm.parameters()]
        small_lm.zero_grad()
        return out

    small_lm.zero_grad()
    popi_backward(small_lm, item, cfg, pad_id=0, shared_prefix=False)
    ref = grads()
    sums = []
    for c in (1, 0):
        group_backward(small_lm, item, [i for i in range(k) if rewards[i] == c], cfg, 0)
        sums.append(grads())
    a1, a0 = binary_advantages(rewards.astype(np.float64))
    worst = 0.0
    for r, s1, s0 in zip(ref, *sums):
        rebuilt = -(a1 * s1 + a0 * s0) / k
        worst = max(worst, float((rebuilt - r).abs().max() / (r.abs().max() + 1e-12)))
    assert sum(float(r.abs().sum()) for r in ref) > 0
    assert worst < 1e-5, worst
