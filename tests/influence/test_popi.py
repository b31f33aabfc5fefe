"""POPI gradients against float64 one-response-at-a-time references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cropi.config import GradientConfig
from cropi.influence.params import select_params
from cropi.influence.popi import grpo_advantages, popi_backward
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


def _naive_grad(model, item, clip_eps=None):
    """float64 reference: one response at a time, full forward, no padding."""
    m = copy.deepcopy(model).double()
    adv = grpo_advantages(torch.tensor(item.rewards)).double()
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
    cfg = GradientConfig(**kw)
    ps = select_params(model, cfg)
    ps.zero_grad()
    assert popi_backward(model, item, cfg, PAD)
    return torch.cat([g.flatten() for g in ps.grads()]).double()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("clip", [None, 0.2])
def test_popi_matches_float64_naive_loop(small_lm, clip):
    item = _item([1, 0, 0, 1], seed=1)
    ref = _naive_grad(small_lm, item, clip)
    ours = _ours(small_lm, item, clip_eps=clip)
    assert _rel(ours, ref) < 1e-5


def test_popi_invariant_to_micro_batch_size(small_lm):
    item = _item([1, 0, 1, 0, 0, 1], seed=2, k=6)
    a = _ours(small_lm, item, max_batch_tokens=16)  # one response per micro-batch
    b = _ours(small_lm, item, max_batch_tokens=4096)  # all at once
    assert _rel(a, b) < 1e-6


def test_popi_at_beta_equals_on_policy_grpo_gradient(small_lm):
    """With beta = theta (rho = 1), g = -(1/K) sum_k A_k/|tau_k| sum_t grad log pi."""
    item = _item([0, 1, 1, 0], seed=3, with_beta=small_lm)
    ours = _ours(small_lm, item)
    m = copy.deepcopy(small_lm).double()
    adv = grpo_advantages(torch.tensor(item.rewards)).double()
    for resp, a in zip(item.response_ids, adv):
        lp = _naive_logprobs(m, item.prompt_ids, resp)
        (-(a * lp.mean()) / len(item.response_ids)).backward()
    ref = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert _rel(ours, ref) < 1e-5


def test_zero_variance_prompt_has_no_gradient(small_lm):
    item = _item([1, 1, 1, 1], seed=4)
    ps = select_params(small_lm, GradientConfig())
    ps.zero_grad()
    assert popi_backward(small_lm, item, GradientConfig(), PAD) is False
    assert all(p.grad is None for p in ps.params)


def test_advantages_unbiased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    a = grpo_advantages(r).double()
    expected = (r.double() - 0.25) / (r.double().std(unbiased=True) + 1e-4)
    assert torch.allclose(a, expected, atol=1e-6)


def test_reweighted_equals_grpo_at_beta(small_lm):
    item = _item([0, 1, 0, 1], seed=5, with_beta=small_lm)
    a = _ours(small_lm, item, advantage="grpo")
    b = _ours(small_lm, item, advantage="reweighted")
    assert _rel(b, a) < 1e-4


def test_filter_params_subset(small_lm):
    cfg = GradientConfig(params="filter", exclude="embed|norm")
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
