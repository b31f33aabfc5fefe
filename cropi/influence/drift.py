"""How far the policy has drifted from beta on the stored rollouts (stages m > 0).

POPI reuses beta's responses at every stage, weighting them by importance ratios. When the current
policy theta_m has moved far from beta, a few responses carry all the weight and the off-policy
gradient is noisy. The diagnostic is the effective sample size of the sequence-level weights of a
prompt's K responses,

    w_k = exp( sum_t log pi_theta(a_kt | ...) - log beta(a_kt | ...) ),
    ESS/K = (sum_k w_k)^2 / (K sum_k w_k^2)                  in [1/K, 1],

1 when theta = beta (all weights equal) and 1/K when one response dominates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cropi.influence.scorers import ess, sequence_logw
from cropi.model.logprobs import response_logprobs
from cropi.rollout.store import PromptRollouts
from cropi.utils.progress import track


def prompt_ess(model: torch.nn.Module, item: PromptRollouts, pad_id: int,
               max_batch_tokens: int = 4096) -> float:
    """ESS/K of one prompt's stored responses at ``model``'s weights (teacher-forced, no grad)."""
    k = len(item.response_ids)
    lp = response_logprobs(model, [item.prompt_ids] * k, item.response_ids, pad_id, max_batch_tokens)
    return float(ess(sequence_logw([np.asarray(x) for x in lp], item.logprobs)))


def pool_ess(model: torch.nn.Module, items: Sequence[PromptRollouts], pad_id: int,
             max_batch_tokens: int = 4096, only_with_gradient: bool = True) -> np.ndarray:
    """``[n]`` ESS/K per prompt; NaN for prompts without a gradient when ``only_with_gradient``
    (they are never scored, so their drift does not matter and costs nothing)."""
    out = np.full(len(items), np.nan)
    todo = [i for i, it in enumerate(items) if not (only_with_gradient and it.zero_grad)]
    with track("drift (ESS)", total=len(todo)) as bar:
        for i in todo:
            out[i] = prompt_ess(model, items[i], pad_id, max_batch_tokens)
            bar.advance()
    return out


def drift_summary(ess_k: np.ndarray, threshold: float = 0.5) -> dict[str, float | int | None]:
    """Mean ESS/K and the share of prompts (with a value) below ``threshold``."""
    vals = ess_k[np.isfinite(ess_k)]
    return {"n": int(vals.size), "mean_ess": float(vals.mean()) if vals.size else None,
            "share_below": float(np.mean(vals < threshold)) if vals.size else None,
            "threshold": threshold}
