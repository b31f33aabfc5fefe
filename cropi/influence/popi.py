"""POPI: the practical off-policy policy gradient of one prompt (docs/concepts.md#popi-gradient).

For prompt s with stored responses tau_1..tau_K ~ beta, rewards R_k and beta's log-probs:

    A_k      = (R_k - mean R) / (std_unbiased R + 1e-4)
    rho_k,t  = exp(log pi_theta(a_k,t | ...) - log beta(a_k,t | ...))
    L(theta) = -(1/K) sum_k (1/|tau_k|) sum_t rho_k,t * A_k
    g(s)     = grad_theta L

Options: PPO clipping of rho (``clip_eps``), self-normalised importance-weighted advantages
(``advantage='reweighted'``). At theta = beta, rho = 1 and g is the on-policy GRPO gradient on the
stored samples. Prompts whose rewards are all equal have A = 0 and g = 0 exactly: they are skipped.
"""

from __future__ import annotations

import torch

from cropi.config import GradientConfig
from cropi.model.loading import bf16_is_fast
from cropi.model.logprobs import micro_batches, pack, prompt_groups, shared_prefix_logprobs, token_logprobs
from cropi.rollout.store import PromptRollouts

ADV_EPS = 1e-4


def grpo_advantages(rewards: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Group-normalised advantages [K]. With ``weights`` (self-normalised), weighted moments."""
    r = rewards.double()
    if weights is None:
        mu, sigma = r.mean(), r.std(unbiased=True)
    else:
        w = weights.double() / weights.double().sum()
        mu = (w * r).sum()
        k = r.numel()
        sigma = torch.sqrt((w * (r - mu) ** 2).sum() * k / (k - 1))
    return ((r - mu) / (sigma + ADV_EPS)).float()


def surrogate(new_lp: torch.Tensor, old_lp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
              lengths: torch.Tensor, clip_eps: float | None) -> torch.Tensor:
    """Sum over rows of (1/|tau|) sum_t rho * A (clipped PPO form when clip_eps is set). [B,R] -> []"""
    ratio = torch.exp(new_lp - old_lp) * mask
    a = adv.unsqueeze(-1)
    obj = ratio * a
    if clip_eps is not None:
        clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a
        obj = torch.minimum(obj, clipped) * mask
    return (obj.sum(-1) / lengths).sum()


def _reweight(model: torch.nn.Module, item: PromptRollouts, pad_id: int) -> torch.Tensor:
    """Sequence weights w_k = exp(mean_t log pi - mean_t log beta) at the current model. [K]"""
    with torch.no_grad():
        lp = shared_prefix_logprobs(model, item.prompt_ids, item.response_ids, pad_id).double().cpu()
    lens = torch.as_tensor([len(r) for r in item.response_ids], dtype=torch.float64).clamp(min=1)
    old = torch.zeros_like(lp)
    for i, o in enumerate(item.logprobs):
        old[i, :len(o)] = torch.as_tensor(o, dtype=torch.float64)
    return torch.exp((lp.sum(-1) - old.sum(-1)) / lens)


def use_autocast(cfg: GradientConfig, device: torch.device | str) -> bool:
    """``gradient.autocast_bf16``, with None resolved for ``device`` (on where bf16 is fast)."""
    return bf16_is_fast(device) if cfg.autocast_bf16 is None else bool(cfg.autocast_bf16)


def backward_tokens(item: PromptRollouts, cfg: GradientConfig, shared_prefix: bool = True) -> int:
    """Tokens :func:`popi_backward` runs forward and backward for ``item``: the prompt once per
    micro-batch and every response (shared prefix), or the prompt with every response (packed)."""
    if item.zero_grad:
        return 0
    resp = sum(len(r) for r in item.response_ids)
    if not shared_prefix:
        return resp + len(item.prompt_ids) * len(item.response_ids)
    k = len(item.response_ids)
    groups = prompt_groups([item.prompt_ids] * k, [1 + len(r) for r in item.response_ids], cfg.max_batch_tokens)
    return resp + len(item.prompt_ids) * len(list(groups))


def popi_backward(model: torch.nn.Module, item: PromptRollouts, cfg: GradientConfig,
                  pad_id: int, shared_prefix: bool = True) -> bool:
    """Accumulate g(s) into the parameters' ``.grad`` (fp32). Returns False for a zero-signal prompt.

    ``shared_prefix`` (default): the prompt runs once per micro-batch and its responses on its KV
    cache (:func:`~cropi.model.logprobs.shared_prefix_logprobs`, the pass rollouts store beta's
    log-probs with); False: the packed [prompt + response] batch of round 1.
    """
    if item.zero_grad:
        return False
    device = next(model.parameters()).device
    rewards = torch.as_tensor(item.rewards, dtype=torch.float32)
    weights = _reweight(model, item, pad_id) if cfg.advantage == "reweighted" else None
    adv = grpo_advantages(rewards, weights)
    k = len(item.response_ids)
    if shared_prefix:
        for idx in prompt_groups([item.prompt_ids] * k, [1 + len(r) for r in item.response_ids],
                                 cfg.max_batch_tokens):
            resp = [item.response_ids[i] for i in idx]
            r_len = max(1, max(len(r) for r in resp))
            mask = torch.zeros((len(idx), r_len), device=device)
            old = torch.zeros_like(mask)
            for j, i in enumerate(idx):
                mask[j, :len(resp[j])] = 1.0
                old[j, :len(item.logprobs[i])] = torch.as_tensor(item.logprobs[i], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast(cfg, device)):
                new = shared_prefix_logprobs(model, item.prompt_ids, resp, pad_id)
            obj = surrogate(new.float(), old, mask, adv[idx].to(device), mask.sum(-1).clamp(min=1),
                            cfg.clip_eps)
            (-obj / k).backward()
        return True
    lengths = [len(item.prompt_ids) + len(r) for r in item.response_ids]
    for idx in micro_batches(lengths, cfg.max_batch_tokens):
        batch = pack([item.prompt_ids] * len(idx), [item.response_ids[i] for i in idx], pad_id, device)
        old = torch.zeros_like(batch.response_mask)
        for j, i in enumerate(idx):
            old[j, :len(item.logprobs[i])] = torch.as_tensor(item.logprobs[i], device=device)
        lens = batch.response_mask.sum(-1).clamp(min=1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast(cfg, device)):
            new = token_logprobs(model, batch)
        obj = surrogate(new.float(), old, batch.response_mask, adv[idx].to(device), lens, cfg.clip_eps)
        (-obj / k).backward()
    return True
