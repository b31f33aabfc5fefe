"""POPI gradients against float64 one-response-at-a-time references.

The references do not reuse the code under test: advantages, importance weights and their
moments are written out here with plain Python (``statistics``, ``math``) from the definitions.
"""

from __future__ import annotations

import copy
import math
import statistics

import numpy as np
import pytest
import torch

from cropi.config import GradientConfig
from cropi.influence.params import select_params
from cropi.influence.popi import grpo_advantages, popi_backward
from cropi.model.logprobs import concat_pays
from cropi.rollout.store import PromptRollouts

PAD = 0


def _item(rewards, seed=0, k=4, with_beta=None, model=None):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 97, (7,), generator=g).tolist()
    resp = [torch.randint(3, 97, (int(n),), generator=g).tolist()
            for n in torch.randint(2, 9, (k,), generator=g)]
    if with_beta is not None:  # log-probs of a different (behaviour) model
        old = [_naive_logprobs(with_beta, prompt, r).detach().float().numpy() for r in resp]
    else:
        old = [np.asarray(torch.randn(len(r), generator=g) * 0.1 - 3.0, dtype=np.float32) for r in resp]
    return PromptRollouts(id="p", source="s", level=None, prompt_ids=prompt, response_ids=resp,
                          response_text=[""] * k, rewards=np.asarray(rewards, np.float32), logprobs=old)


def _naive_logprobs(model, prompt, resp):
    ids = torch.tensor([prompt + resp])
    logits = model(input_ids=ids).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(resp) - 1)
    return lp[pos, torch.tensor(resp)]


def _ref_advantages(rewards, weights=None) -> list[float]:
    """A_k = (R_k - mu) / (sigma + 1e-4), written out independently of ``grpo_advantages``.

    Without weights: mu = mean R, sigma = unbiased (K-1) std of R. With sequence weights w_k:
    self-normalised moments, mu = sum_k w~_k R_k and sigma^2 = K/(K-1) sum_k w~_k (R_k - mu)^2
    with w~ = w / sum w (the K/(K-1) factor makes equal weights give the unbiased std).
    """
    r = [float(x) for x in rewards]
    k = len(r)
    if weights is None:
        mu, sigma = statistics.fmean(r), statistics.stdev(r)
    else:
        total = math.fsum(float(w) for w in weights)
        wn = [float(w) / total for w in weights]
        mu = math.fsum(w * x for w, x in zip(wn, r))
        sigma = math.sqrt(math.fsum(w * (x - mu) ** 2 for w, x in zip(wn, r)) * k / (k - 1))
    return [(x - mu) / (sigma + 1e-4) for x in r]


def _ref_weights(model, item) -> list[float]:
    """w_k = exp(mean_t log pi_theta - mean_t log beta), float64, one response at a time."""
    m = copy.deepcopy(model).double()
    out = []
    with torch.no_grad():
        for resp, old in zip(item.response_ids, item.logprobs):
            lp = _naive_logprobs(m, item.prompt_ids, resp).tolist()
            out.append(math.exp(statistics.fmean(a - float(b) for a, b in zip(lp, old))))
    return out


def _naive_grad(model, item, clip_eps=None, adv=None):
    """float64 reference: one response at a time, full forward, no padding; ``adv`` defaults to
    the plain group-normalised advantages of :func:`_ref_advantages` (held constant)."""
    m = copy.deepcopy(model).double()
    adv = _ref_advantages(item.rewards) if adv is None else adv
    k = len(item.response_ids)
    for resp, old, a in zip(item.response_ids, item.logprobs, adv):
        lp = _naive_logprobs(m, item.prompt_ids, resp)
        ratio = torch.exp(lp - torch.tensor(old, dtype=torch.float64))
        obj = ratio * a
        if clip_eps is not None:
            obj = torch.minimum(obj, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
        (-(obj.mean()) / k).backward()
    return torch.cat([p.grad.flatten() for p in m.parameters()])


def _ours(model, item, **kw):
    cfg = GradientConfig(**{"autocast_bf16": False, **kw})
    ps = select_params(model, cfg)
    ps.zero_grad()
    assert popi_backward(model, item, cfg, PAD)
    return torch.cat([g.flatten() for g in ps.grads()]).double()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("clip", [None, 0.2])
def test_popi_matches_float64_naive_loop(small_lm, clip, concat):
    item = _item([1, 0, 0, 1], seed=1)
    assert small_lm.config._attn_implementation == "sdpa" and concat_pays(  # the concatenated pass runs
        small_lm.config, len(item.prompt_ids) - 1, [len(r) for r in item.response_ids])
    ref = _naive_grad(small_lm, item, clip)
    ours = _ours(small_lm, item, clip_eps=clip, concat_responses=concat)
    assert _rel(ours, ref) < 1e-5


@pytest.mark.parametrize("concat", [True, False])
def test_popi_invariant_to_micro_batch_size(small_lm, concat):
    item = _item([1, 0, 1, 0, 0, 1], seed=2, k=6)
    a = _ours(small_lm, item, max_batch_tokens=16, concat_responses=concat)  # a response or two per micro-batch
    b = _ours(small_lm, item, max_batch_tokens=4096, concat_responses=concat)  # all at once
    assert _rel(a, b) < 1e-6


def test_popi_at_beta_equals_on_policy_grpo_gradient(small_lm):
    """With beta = theta (rho = 1), g = -(1/K) sum_k A_k/|tau_k| sum_t grad log pi."""
    item = _item([0, 1, 1, 0], seed=3, with_beta=small_lm)
    ours = _ours(small_lm, item)
    m = copy.deepcopy(small_lm).double()
    for resp, a in zip(item.response_ids, _ref_advantages(item.rewards)):
        lp = _naive_logprobs(m, item.prompt_ids, resp)
        (-(a * lp.mean()) / len(item.response_ids)).backward()
    ref = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert _rel(ours, ref) < 1e-5


def test_zero_variance_prompt_has_no_gradient(small_lm):
    item = _item([1, 1, 1, 1], seed=4)
    ps = select_params(small_lm, GradientConfig())
    ps.zero_grad()
    assert popi_backward(small_lm, item, GradientConfig(autocast_bf16=False), PAD) is False
    assert all(p.grad is None for p in ps.params)


def test_advantages_unbiased_std():
    # by hand: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    a = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0])).tolist()
    assert a == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001], abs=1e-6)
    rewards = [1.0, 0.0, 0.5, 1.0, 0.25]
    assert grpo_advantages(torch.tensor(rewards)).tolist() == pytest.approx(_ref_advantages(rewards), abs=1e-6)


def test_weighted_advantages_match_hand_moments():
    rewards, w = [1.0, 0.0, 0.0, 1.0, 0.5], [0.5, 2.0, 1.0, 0.25, 1.25]
    # by hand: w~ = w / 5; mu = (0.5 + 0.25 + 0.625) / 5 = 0.275;
    # sigma^2 = 5/4 * sum w~ (R - mu)^2 = (0.5*.725^2 + 2*.275^2 + .275^2 + .25*.725^2 + 1.25*.225^2) / 4
    mu = 0.275
    sigma = math.sqrt((0.5 * 0.725**2 + 2 * 0.275**2 + 0.275**2 + 0.25 * 0.725**2 + 1.25 * 0.225**2) / 4)
    expected = [(r - mu) / (sigma + 1e-4) for r in rewards]
    assert _ref_advantages(rewards, w) == pytest.approx(expected, rel=1e-12)
    ours = grpo_advantages(torch.tensor(rewards), torch.tensor(w)).tolist()
    assert ours == pytest.approx(expected, abs=1e-6)
    # scaling the weights changes nothing (self-normalised); equal weights give plain GRPO
    assert grpo_advantages(torch.tensor(rewards), torch.tensor(w) * 7).tolist() == pytest.approx(expected, abs=1e-6)
    assert grpo_advantages(torch.tensor(rewards), torch.ones(5)).tolist() == pytest.approx(
        _ref_advantages(rewards), abs=1e-6)


def test_reweighted_equals_grpo_at_beta(small_lm):
    item = _item([0, 1, 0, 1], seed=5, with_beta=small_lm)
    a = _ours(small_lm, item, advantage="grpo")
    b = _ours(small_lm, item, advantage="reweighted")
    assert _rel(b, a) < 1e-4


def _perturbed(model, scale=0.3, seed=0):
    """A copy of ``model`` with Gaussian noise on a few weights, so that pi_theta != beta."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("model.layers.1.mlp.") or name == "model.embed_tokens.weight":
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return m


def test_reweighted_with_unequal_weights_matches_float64_reference(small_lm):
    """theta != beta: weights w_k differ, the advantages use the weighted moments."""
    item = _item([1, 0, 0, 1, 1, 0], seed=7, k=6, with_beta=small_lm)  # stored log-probs: beta
    theta = _perturbed(small_lm)
    w = _ref_weights(theta, item)
    assert max(w) / min(w) > 1.5  # far from the theta = beta case where every w_k = 1
    adv = _ref_advantages(item.rewards, w)
    plain = _ref_advantages(item.rewards)
    assert max(abs(a - b) for a, b in zip(adv, plain)) > 0.1
    ref = _naive_grad(theta, item, adv=adv)
    ours = _ours(theta, item, advantage="reweighted")
    assert _rel(ours, ref) < 1e-5
    assert _rel(_ours(theta, item, advantage="grpo"), ref) > 1e-2  # the test tells the two apart
    assert _rel(_ours(theta, item, advantage="grpo"), _naive_grad(theta, item)) < 1e-5


def test_filter_params_subset(small_lm):
    cfg = GradientConfig(params="filter", exclude="embed|norm", autocast_bf16=False)
    ps = select_params(small_lm, cfg)
    assert ps.names and not any("embed" in n or "norm" in n for n in ps.names)
    item = _item([1, 0, 0, 1], seed=6)
    ps.zero_grad()
    popi_backward(small_lm, item, cfg, PAD)
    full = dict(zip(*[[n for n, _ in small_lm.named_parameters()], _naive_grad_list(small_lm, item)]))
    for n, g in zip(ps.names, ps.grads()):
        assert torch.allclose(g.double(), full[n], rtol=1e-4, atol=1e-8)


def _naive_grad_list(model, item):
    m = copy.deepcopy(model).double()
    for p in m.parameters():
        p.requires_grad_(True)
    flat = _naive_grad(m, item)
    out, i = [], 0
    for p in m.parameters():
        out.append(flat[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out
