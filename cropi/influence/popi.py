"""POPI: the practical off-policy policy gradient of one prompt (docs/concepts.md#popi-gradient).

For prompt s with stored responses tau_1..tau_K ~ beta, rewards R_k and beta's log-probs:

    A_k      = (R_k - mean R) / (std_unbiased R + 1e-4)
    rho_k,t  = exp(log pi_theta(a_k,t | ...) - log beta(a_k,t | ...))
    L(theta) = -(1/K) sum_k (1/|tau_k|) sum_t rho_k,t * A_k
    g(s)     = grad_theta L

Options: PPO clipping of rho (``clip_eps``), self-normalised importance-weighted advantages
(``advantage='reweighted'``). At theta = beta, rho = 1 and g is the on-policy GRPO gradient on the
stored samples. Prompts whose rewards are all equal have A = 0 and g = 0 exactly: they are skipped.

:func:`popi_backward` runs one prompt per backward (its gradient lands in ``.grad``);
:func:`popi_backward_batched` runs several prompts in one forward and backward, for per-prompt
gradients taken by layer hooks (``gradient.prompts_per_backward``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cropi.config import GradientConfig
from cropi.model.loading import bf16_is_fast
from cropi.model.logprobs import (cache_kw, micro_batches, new_cache, pack, prefix_groups,
                                  shared_prefix_logprobs, token_logprobs)
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


def _reweight(model: torch.nn.Module, item: PromptRollouts, pad_id: int, concat: bool = True) -> torch.Tensor:
    """Sequence weights w_k = exp(mean_t log pi - mean_t log beta) at the current model. [K]"""
    with torch.no_grad():
        lp = shared_prefix_logprobs(model, item.prompt_ids, item.response_ids, pad_id, concat).double().cpu()
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
    groups = prefix_groups([item.prompt_ids] * k, item.response_ids, cfg.max_batch_tokens)
    return resp + len(item.prompt_ids) * len(groups)


def popi_backward(model: torch.nn.Module, item: PromptRollouts, cfg: GradientConfig,
                  pad_id: int, shared_prefix: bool = True,
                  on_logprobs: Callable[[list[int], torch.Tensor], None] | None = None) -> bool:
    """Accumulate g(s) into the parameters' ``.grad`` (fp32). Returns False for a zero-signal prompt.

    ``shared_prefix`` (default): the prompt runs once per micro-batch and its responses on its KV
    cache (:func:`~cropi.model.logprobs.shared_prefix_logprobs`, the pass rollouts store beta's
    log-probs with); False: the packed [prompt + response] batch of round 1. ``on_logprobs``:
    called once per micro-batch with the responses' indices and the current policy's per-token
    log-probs ``[rows, longest]`` (detached; row j's first ``len(response)`` entries are real),
    the values the importance ratios are made of.
    """
    if item.zero_grad:
        return False
    device = next(model.parameters()).device
    rewards = torch.as_tensor(item.rewards, dtype=torch.float32)
    weights = _reweight(model, item, pad_id, cfg.concat_responses) if cfg.advantage == "reweighted" else None
    adv = grpo_advantages(rewards, weights)
    k = len(item.response_ids)
    if shared_prefix:
        for idx in prefix_groups([item.prompt_ids] * k, item.response_ids, cfg.max_batch_tokens):
            resp = [item.response_ids[i] for i in idx]
            r_len = max(1, max(len(r) for r in resp))
            mask = torch.zeros((len(idx), r_len), device=device)
            old = torch.zeros_like(mask)
            for j, i in enumerate(idx):
                mask[j, :len(resp[j])] = 1.0
                old[j, :len(item.logprobs[i])] = torch.as_tensor(item.logprobs[i], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast(cfg, device)):
                new = shared_prefix_logprobs(model, item.prompt_ids, resp, pad_id, cfg.concat_responses)
            if on_logprobs is not None:
                on_logprobs(idx, new.detach())
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
        if on_logprobs is not None:
            on_logprobs(list(idx), new.detach())
        obj = surrogate(new.float(), old, batch.response_mask, adv[idx].to(device), lens, cfg.clip_eps)
        (-obj / k).backward()
    return True


def fits_one_backward(item: PromptRollouts, cfg: GradientConfig) -> bool:
    """Whether ``item``'s K continuations fit one micro-batch (rows x (1 + longest response)
    within ``max_batch_tokens``, as :func:`~cropi.model.logprobs.prompt_groups` cuts them) and
    its prompt has a prefix to share (>= 2 tokens): the condition to join a batched backward."""
    rows = len(item.response_ids)
    longest = 1 + max((len(r) for r in item.response_ids), default=0)
    return len(item.prompt_ids) >= 2 and rows * longest <= cfg.max_batch_tokens


def backward_batches(items: Sequence[PromptRollouts], cfg: GradientConfig, max_prompts: int
                     ) -> list[list[int]]:
    """Consecutive ``items`` (with a gradient) cut into groups for :func:`popi_backward_batched`:
    at most ``max_prompts`` prompts, all rows x (1 + the group's longest response) within
    ``max_batch_tokens``. An item that does not :func:`fits_one_backward` is a group of its own
    (score it with :func:`popi_backward`)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    rows = longest = 0
    for i, it in enumerate(items):
        if not fits_one_backward(it, cfg):
            if cur:
                groups.append(cur)
            groups.append([i])
            cur, rows, longest = [], 0, 0
            continue
        r, ln = len(it.response_ids), 1 + max(len(x) for x in it.response_ids)
        if cur and (len(cur) >= max_prompts or (rows + r) * max(longest, ln) > cfg.max_batch_tokens):
            groups.append(cur)
            cur, rows, longest = [], 0, 0
        cur.append(i)
        rows, longest = rows + r, max(longest, ln)
    if cur:
        groups.append(cur)
    return groups


def popi_backward_batched(model: torch.nn.Module, items: Sequence[PromptRollouts],
                          cfg: GradientConfig, pad_id: int,
                          set_rows: Callable[[torch.Tensor], None] | None = None) -> None:
    """One forward and one backward of ``sum_e L(theta; s_e)`` over several prompts, each with
    a gradient and each :func:`fits_one_backward`.

    The shared-prefix pass of :func:`popi_backward` for several prompts at once: the prompts
    (minus their last token) run as one left-padded batch that fills a KV cache, which is
    gathered to each prompt's K rows; then every [last prompt token, response] row runs on it
    (position ids follow each prompt's own length; padded cache positions are masked, so no
    row sees another prompt's tokens). The losses of the prompts are summed, so the parameters'
    ``.grad`` would hold the SUM of their gradients: per-prompt gradients come from hooks that
    see each row's activations and output gradients (``FactorizedHooks``); ``set_rows`` is
    called before each model call with the prompt index of every batch row (``[P]`` for the
    prefix call, ``[sum K]`` for the continuation call).
    """
    if not items:
        return
    if any(it.zero_grad or not fits_one_backward(it, cfg) for it in items):
        raise ValueError("popi_backward_batched needs prompts with a gradient that fit one micro-batch")
    device = next(model.parameters()).device
    n = len(items)
    ks = [len(it.response_ids) for it in items]
    rows = torch.repeat_interleave(torch.arange(n), torch.as_tensor(ks))
    resp = [r for it in items for r in it.response_ids]
    lp = [o for it in items for o in it.logprobs]
    r_len = max(1, max(len(r) for r in resp))
    pre = [len(it.prompt_ids) - 1 for it in items]
    width = max(pre)
    cont = torch.full((len(resp), r_len + 1), pad_id, dtype=torch.long)
    mask = torch.zeros((len(resp), r_len))
    old = torch.zeros_like(mask)
    for j, (e, r) in enumerate(zip(rows.tolist(), resp)):
        cont[j, 0] = items[e].prompt_ids[-1]
        if r:
            cont[j, 1:1 + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            mask[j, :len(r)] = 1.0
        old[j, :len(lp[j])] = torch.as_tensor(lp[j])
    advs = []
    for it in items:
        weights = _reweight(model, it, pad_id, cfg.concat_responses) if cfg.advantage == "reweighted" else None
        advs.append(grpo_advantages(torch.as_tensor(it.rewards, dtype=torch.float32), weights))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pmask = torch.zeros((n, width), dtype=torch.long)
    for e, it in enumerate(items):
        ids[e, width - pre[e]:] = torch.as_tensor(list(it.prompt_ids[:-1]), dtype=torch.long)
        pmask[e, width - pre[e]:] = 1
    ppos = (pmask.cumsum(-1) - 1).clamp(min=0)
    cpos = torch.as_tensor(pre)[rows][:, None] + torch.arange(r_len + 1)
    attn = torch.cat([pmask[rows], torch.ones((len(resp), r_len + 1), dtype=torch.long)], dim=1)
    kw = cache_kw(model)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast(cfg, device)):
        cache = new_cache(model)
        if set_rows is not None:
            set_rows(torch.arange(n, device=device))
        model(input_ids=ids.to(device), attention_mask=pmask.to(device), position_ids=ppos.to(device),
              use_cache=True, logits_to_keep=1, **{kw: cache})
        cache.batch_select_indices(rows.to(device))
        if set_rows is not None:
            set_rows(rows.to(device))
        out = model(input_ids=cont.to(device), attention_mask=attn.to(device),
                    position_ids=cpos.to(device), use_cache=True, **{kw: cache})
    logp = torch.log_softmax(out.logits[:, :r_len, :].float(), dim=-1)
    new = logp.gather(-1, cont[:, 1:].to(device).unsqueeze(-1)).squeeze(-1) * mask.to(device)
    mask, old = mask.to(device), old.to(device)
    loss = new.new_zeros(())
    start = 0
    for e, k in enumerate(ks):
        sl = slice(start, start + k)
        obj = surrogate(new[sl], old[sl], mask[sl], advs[e].to(device), mask[sl].sum(-1).clamp(min=1),
                        cfg.clip_eps)
        loss = loss - obj / k
        start += k
    loss.backward()
