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


Drift = dict[str, tuple[float, float, float]]
"""Prompt id -> ``(ESS/K, nll, pass_rate_is)`` (:func:`drift_from_logprobs`)."""


def prompt_drift(model: torch.nn.Module, item: PromptRollouts, pad_id: int,
                 max_batch_tokens: int = 4096, concat: bool = True) -> tuple[float, float, float]:
    """``(ESS/K, nll, pass_rate_is)`` of one prompt's stored responses at ``model``'s weights
    (teacher-forced, no grad): the ESS of the sequence weights, the policy's mean negative
    log-probability per token of the responses, and its pass rate estimated with self-normalised
    sequence weights, sum_k w_k R_k / sum_k w_k. ``concat``: the prompt once and its responses
    as one sequence (:func:`~cropi.model.logprobs.shared_prefix_logprobs`); False: the prompt
    with every response, padded rows (the earlier pass)."""
    k = len(item.response_ids)
    lp = response_logprobs(model, [item.prompt_ids] * k, item.response_ids, pad_id, max_batch_tokens,
                           share_prompts=concat)
    return drift_from_logprobs(item, lp)


def drift_from_logprobs(item: PromptRollouts, logprobs: Sequence[Sequence[float] | np.ndarray]
                        ) -> tuple[float, float, float]:
    """``(ESS/K, nll, pass_rate_is)`` of :func:`prompt_drift` from the policy's per-token log-probs
    of ``item``'s K responses (one sequence per response, in order), however they were computed:
    the POPI gradient pass's forward gives them too (:func:`cropi.influence.pipeline.prompt_gradient`)."""
    lp = [np.asarray(x, dtype=np.float64) for x in logprobs]
    logw = sequence_logw(lp, item.logprobs)
    n_tok = sum(x.size for x in lp)
    nll = float(-sum(x.sum() for x in lp) / n_tok) if n_tok else float("nan")
    w = np.exp(logw - logw.max())
    pass_is = float(np.sum(w * np.asarray(item.rewards, dtype=np.float64)) / np.sum(w))
    return float(ess(logw)), nll, pass_is


def prompt_ess(model: torch.nn.Module, item: PromptRollouts, pad_id: int,
               max_batch_tokens: int = 4096, concat: bool = True) -> float:
    """ESS/K of one prompt's stored responses at ``model``'s weights (teacher-forced, no grad)."""
    return prompt_drift(model, item, pad_id, max_batch_tokens, concat)[0]


def pool_ess(model: torch.nn.Module, items: Sequence[PromptRollouts], pad_id: int,
             max_batch_tokens: int = 4096, only_with_gradient: bool = True, details: bool = False,
             concat: bool = True, known: Drift | None = None
             ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """``[n]`` ESS/K per prompt; NaN for prompts without a gradient when ``only_with_gradient``
    (they are never scored, so their drift does not matter and costs nothing).

    ``details``: also ``{"nll": [n], "pass_rate_is": [n]}`` from the same pass
    (:func:`prompt_drift`); a prompt without a gradient has its (all-equal) reward as pass rate
    and NaN NLL when it was skipped. ``known``: prompt id -> measures already taken (from the
    gradient pass, :func:`drift_from_logprobs`); only the other prompts run the pass."""
    known = known or {}
    out = np.full(len(items), np.nan)
    nll = np.full(len(items), np.nan)
    pass_is = np.array([it.pass_rate for it in items], dtype=np.float64)
    for i, it in enumerate(items):
        if it.id in known:
            out[i], nll[i], pass_is[i] = known[it.id]
    todo = [i for i, it in enumerate(items)
            if not (only_with_gradient and it.zero_grad) and it.id not in known]
    if todo:
        with track("drift (ESS)", total=len(todo)) as bar:
            for i in todo:
                out[i], nll[i], pass_is[i] = prompt_drift(model, items[i], pad_id, max_batch_tokens, concat)
                bar.advance()
    if details:
        return out, {"nll": nll, "pass_rate_is": pass_is}
    return out


def drift_tokens(item: PromptRollouts, concat: bool = True) -> int:
    """Tokens :func:`prompt_drift` runs forward for ``item`` (one micro-batch per prompt assumed):
    the prompt once and every response (``concat``), else the prompt with every response."""
    resp = sum(len(r) for r in item.response_ids)
    return resp + len(item.prompt_ids) * (1 if concat else len(item.response_ids))


def drift_summary(ess_k: np.ndarray, threshold: float = 0.5) -> dict[str, float | int | None]:
    """Mean ESS/K and the share of prompts (with a value) below ``threshold``."""
    vals = ess_k[np.isfinite(ess_k)]
    return {"n": int(vals.size), "mean_ess": float(vals.mean()) if vals.size else None,
            "share_below": float(np.mean(vals < threshold)) if vals.size else None,
            "threshold": threshold}
