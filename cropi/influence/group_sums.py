"""POPI features of binary-reward prompts from per-group gradient sums.

With rewards R_k in {0, 1}, POPI's advantage A_k = (R_k - mean R) / (std_unbiased R + 1e-4) takes
one value A_1 on the correct and one value A_0 on the incorrect responses, so the POPI gradient of
m responses (:mod:`cropi.influence.popi`, at theta = beta) is

    g = -(1/m) (A_1 S_1 + A_0 S_0),    S_c = sum_{k: R_k = c} grad (1/|tau_k|) sum_t rho_kt,

a fixed combination of two group sums. Projection is linear, so the projected g of ANY subset of a
prompt's responses (a half of them, all of them, the responses of several independent draws
pooled) follows exactly from the projected group sums of its parts, with the advantages
recomputed over the responses combined. benchmarks/selection_quality.py stores, per prompt, the
four sums ``[S_{A,1}, S_{A,0}, S_{B,1}, S_{B,0}]`` of two disjoint halves A and B of its responses
(:func:`group_backward` computes one sum) and derives its features with :func:`half_features`
and :func:`pooled_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cropi.influence.popi import ADV_EPS


def group_backward(model: Any, item: Any, idx: Sequence[int], cfg: Any, pad_id: int) -> None:
    """Accumulate ``sum_{k in idx} grad (1/|tau_k|) sum_t rho_kt`` of ``item``'s responses ``idx``
    into the parameters' ``.grad``: POPI's surrogate with advantage 1 and no ``-1/K``, with the
    packed micro-batches of :func:`~cropi.influence.popi.popi_backward` (``shared_prefix=False``)
    and bf16 autocast when ``cfg.autocast_bf16`` is true."""
    import torch

    from cropi.influence.popi import surrogate
    from cropi.model.logprobs import micro_batches, pack, token_logprobs

    device = next(model.parameters()).device
    lengths = [len(item.prompt_ids) + len(item.response_ids[i]) for i in idx]
    for mb in micro_batches(lengths, cfg.max_batch_tokens):
        sel = [idx[j] for j in mb]
        batch = pack([item.prompt_ids] * len(sel), [item.response_ids[i] for i in sel], pad_id, device)
        old = torch.zeros_like(batch.response_mask)
        for j, i in enumerate(sel):
            old[j, :len(item.logprobs[i])] = torch.as_tensor(item.logprobs[i], device=device)
        lens = batch.response_mask.sum(-1).clamp(min=1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            new = token_logprobs(model, batch)
        ones = torch.ones(len(sel), device=device)
        surrogate(new.float(), old, batch.response_mask, ones, lens, cfg.clip_eps).backward()


def binary_advantages(rewards: np.ndarray) -> tuple[float, float]:
    """POPI's advantages (A for R=1, A for R=0) of a binary reward vector, in float64; (0, 0) when
    there are fewer than 2 rewards or all are equal."""
    r = rewards
    if r.size < 2 or np.all(r == r[0]):
        return 0.0, 0.0
    mu, sd = r.mean(), r.std(ddof=1)
    return (1 - mu) / (sd + ADV_EPS), (0 - mu) / (sd + ADV_EPS)


def popi_feature(s1: np.ndarray, s0: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """g = -(1/m) (A_1 S_1 + A_0 S_0) of m responses with ``rewards [m]``, from the sums of their
    correct (S_1) and incorrect (S_0) per-response gradients; zeros when all rewards are equal."""
    a1, a0 = binary_advantages(rewards)
    return -(a1 * s1 + a0 * s0) / rewards.size if a1 or a0 else np.zeros_like(s1)


def half_features(groups: np.ndarray, rewards: np.ndarray, half: int) -> dict[str, np.ndarray]:
    """Features ``{"A", "B", "full"}: [n, k]`` from group sums ``[n, 4, k]`` and rewards
    ``[n, K]``: the POPI gradient of the responses of each half (``rewards[:, :half]`` and
    ``rewards[:, half:]``) and of all of them."""
    out = {"A": np.stack([popi_feature(g[0], g[1], r[:half]) for g, r in zip(groups, rewards)]),
           "B": np.stack([popi_feature(g[2], g[3], r[half:]) for g, r in zip(groups, rewards)])}
    out["full"] = pooled_features([groups], [rewards])
    return out


def pooled_features(groups: Sequence[np.ndarray], rewards: Sequence[np.ndarray]) -> np.ndarray:
    """POPI features ``[n, k]`` of all responses of one or more draws together, from their group
    sums ``[n, 4, k]`` (correct and incorrect sums of both halves) and rewards ``[n, K_c]``."""
    s1 = sum(g[:, 0] + g[:, 2] for g in groups)
    s0 = sum(g[:, 1] + g[:, 3] for g in groups)
    r = np.concatenate(list(rewards), axis=1)
    return np.stack([popi_feature(s1[i], s0[i], r[i]) for i in range(r.shape[0])])
