"""Projected POPI gradients for a set of prompts into a resumable feature store.

One backward per prompt (a loop beats vmap on CPU and uses far less memory), then the projector
reads the parameters' ``.grad`` tensors in their fixed order; nothing of size d is flattened or kept.

With ``gradient.prompts_per_backward > 1`` and the factorized projector, several prompts share one
forward and backward (:func:`~cropi.influence.popi.popi_backward_batched`) and each prompt's
projected gradient comes from layer hooks (``FactorizedHooks`` with ``per_example_rest``): the
features equal the one-prompt path's with the same projector up to floating-point rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence.drift import Drift, drift_from_logprobs
from cropi.influence.features import FeatureStore
from cropi.influence.params import ParamSet, attach_lora, select_params
from cropi.influence.popi import (backward_batches, backward_tokens, fits_one_backward, popi_backward,
                                  popi_backward_batched, use_autocast)
from cropi.influence.projection import Projector, make_projector
from cropi.rollout.store import PromptRollouts
from cropi.utils.progress import track
from cropi.utils.work import Work

log = logging.getLogger(__name__)


@dataclass
class Timings:
    """Wall-clock split of scoring (seconds)."""

    grad: float = 0.0
    project: float = 0.0
    store: float = 0.0
    n_prompts: int = 0
    n_zero_grad: int = 0
    work: Work = dataclasses.field(default_factory=Work)  # prompts with a gradient, tokens backpropagated

    def as_dict(self) -> dict[str, Any]:
        total = self.grad + self.project + self.store
        return {"grad_s": self.grad, "project_s": self.project, "store_s": self.store,
                "total_s": total, "n_prompts": self.n_prompts, "n_zero_grad": self.n_zero_grad,
                "project_share": self.project / total if total else 0.0, "work": self.work.as_dict()}


def prompt_gradient(model: torch.nn.Module, params: ParamSet, item: PromptRollouts, cfg: GradientConfig,
                    pad_id: int, timings: Timings, drift: Drift | None = None) -> bool:
    """One prompt's POPI gradient into ``params``' ``.grad`` (timed in ``timings``); False for a
    zero-signal prompt. ``drift``: also record the prompt's drift measures from the log-probs of
    the pass's own forward (no extra pass)."""
    t0 = time.perf_counter()
    params.zero_grad()
    lps: list[np.ndarray | None] = [None] * len(item.response_ids)

    def keep(idx: list[int], new: torch.Tensor) -> None:
        rows = new.double().cpu().numpy()
        for j, i in enumerate(idx):
            lps[i] = rows[j, :len(item.response_ids[i])]

    has_signal = popi_backward(model, item, cfg, pad_id, on_logprobs=None if drift is None else keep)
    if drift is not None and has_signal:
        drift[item.id] = drift_from_logprobs(item, [x for x in lps if x is not None])
    if params.params and params.params[0].is_cuda:  # CUDA is asynchronous: time the backward itself
        torch.cuda.synchronize(params.params[0].device)
    timings.grad += time.perf_counter() - t0
    if not has_signal:
        timings.n_zero_grad += 1
        return False
    timings.work.add(Work(prompts=1, responses=len(item.response_ids),
                          tokens_backward=backward_tokens(item, cfg)))
    return True


def prompt_feature(model: torch.nn.Module, params: ParamSet, projector: Projector,
                   item: PromptRollouts, cfg: GradientConfig, pad_id: int,
                   timings: Timings | None = None, drift: Drift | None = None) -> np.ndarray | None:
    """Projected g(s) as float32 [k], or None for a zero-signal prompt (:func:`prompt_gradient`,
    then the projection)."""
    timings = timings or Timings()
    if not prompt_gradient(model, params, item, cfg, pad_id, timings, drift):
        return None
    t1 = time.perf_counter()
    feat = projector.project(params.grads()).detach().float().cpu().numpy()
    timings.project += time.perf_counter() - t1
    return feat


def batch_features(model: torch.nn.Module, params: ParamSet, projector: Projector,
                   items: Sequence[PromptRollouts], cfg: GradientConfig, pad_id: int,
                   timings: Timings | None = None) -> list[np.ndarray]:
    """Projected g(s) as float32 [k] of several prompts from ONE forward and backward.

    Every item has a gradient and :func:`~cropi.influence.popi.fits_one_backward`; the projector
    is a ``FactorizedProjector`` (per-example projection from layer hooks, no weight gradient
    formed). Timings: the forward and backward (hooks included) count as ``grad``, assembling
    the features (sketching the norms' per-prompt gradients) as ``project``."""
    from cropi.influence.projection.factorized_hooks import FactorizedHooks

    timings = timings or Timings()
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    params.zero_grad()
    hooks = FactorizedHooks(model, projector, torch.zeros(1, dtype=torch.long, device=device),
                            len(items), per_example_rest=True)  # type: ignore[arg-type]
    with hooks:
        popi_backward_batched(model, items, cfg, pad_id, hooks.set_rows)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    timings.grad += t1 - t0
    for it in items:
        timings.work.add(Work(prompts=1, responses=len(it.response_ids),
                              tokens_backward=backward_tokens(it, cfg)))
    feats = hooks.features().detach().float().cpu().numpy()
    timings.project += time.perf_counter() - t1
    return list(feats)


def supports_batched(projector: Projector) -> bool:
    """Whether ``projector`` projects per example from hooks (``gradient.prompts_per_backward > 1``)."""
    return getattr(projector, "kind", None) == "factorized" and hasattr(projector, "blocks")


def compute_features(model: torch.nn.Module, params: ParamSet, projector: Projector,
                     items: Sequence[PromptRollouts], store: FeatureStore, cfg: GradientConfig,
                     pad_id: int, name: str = "features", flush_every: int = 8,
                     drift: Drift | None = None) -> Timings:
    """Fill every pending row of ``store`` (resumable); finalize it at the end. ``drift``: record
    the drift measures of every prompt scored one per backward (:func:`prompt_feature`), the rows
    an earlier process stored too: their gradient pass runs again (not projected, not stored), so
    a resumed stage's measures equal an uninterrupted one's in any number type."""
    timings = Timings()
    by_id = {it.id: it for it in items}
    pending = store.pending()
    done = len(items) - len(pending)
    if drift is not None and cfg.prompts_per_backward == 1:
        waiting = set(pending)
        for item in items:
            if item.id not in waiting and not item.zero_grad and item.id not in drift:
                prompt_gradient(model, params, item, cfg, pad_id, timings, drift)
    buf_ids: list[str] = []
    buf_feats: list[np.ndarray] = []
    buf_zero: list[bool] = []

    def flush() -> None:
        t = time.perf_counter()
        if buf_ids:
            store.write(list(buf_ids), np.stack(buf_feats), list(buf_zero))
        buf_ids.clear(), buf_feats.clear(), buf_zero.clear()
        timings.store += time.perf_counter() - t

    def emit(item: PromptRollouts, feat: np.ndarray | None) -> None:
        buf_ids.append(item.id)
        buf_zero.append(feat is None)
        buf_feats.append(np.zeros(projector.k, np.float32) if feat is None else feat)
        timings.n_prompts += 1
        if len(buf_ids) >= flush_every:
            flush()
        bar.advance(1, sum(len(r) for r in item.response_ids))

    per_backward = cfg.prompts_per_backward
    if per_backward > 1 and not supports_batched(projector):
        log.warning("gradient.prompts_per_backward=%d needs projection.kind factorized (per-prompt "
                    "gradients from layer hooks); scoring one prompt per backward", per_backward)
        per_backward = 1
    with track(f"score {name}", total=len(items), completed=done) as bar:
        if per_backward == 1:
            for pid in pending:
                item = by_id[pid]
                emit(item, prompt_feature(model, params, projector, item, cfg, pad_id, timings, drift))
        else:
            i = 0
            while i < len(pending):
                window: list[PromptRollouts] = []
                while i < len(pending) and len(window) < per_backward:
                    item = by_id[pending[i]]
                    i += 1
                    if item.zero_grad:
                        timings.n_zero_grad += 1
                        emit(item, None)
                    else:
                        window.append(item)
                for group in backward_batches(window, cfg, per_backward):
                    chunk = [window[j] for j in group]
                    if len(chunk) == 1 and not fits_one_backward(chunk[0], cfg):
                        emit(chunk[0], prompt_feature(model, params, projector, chunk[0], cfg,
                                                      pad_id, timings))
                        continue
                    feats = batch_features(model, params, projector, chunk, cfg, pad_id, timings)
                    for item, feat in zip(chunk, feats):
                        emit(item, feat)
        flush()
    params.zero_grad()
    store.finalize()
    return timings



@dataclass
class ScoringSetup:
    """What a scoring process holds: the model with its gradient parameters and the projector.

    ``spec`` describes them for feature-store manifests (merged with the model fingerprint, the
    stage and the set name by the caller), so every process that builds the same setup writes
    stores that agree.
    """

    model: torch.nn.Module
    params: ParamSet
    projector: Projector
    spec: dict[str, Any]
    gradient: GradientConfig  # the configured one, ``autocast_bf16`` resolved for the model's device
    trainable: list[bool] | None = None  # requires_grad of every parameter before scoring

    def release(self) -> None:
        """Drop gradients and give the model back its own trainable flags (a PEFT model's frozen
        base weights stay frozen)."""
        self.params.zero_grad()
        flags = self.trainable or [True] * sum(1 for _ in self.model.parameters())
        for p, flag in zip(self.model.parameters(), flags):
            p.requires_grad_(flag)


PASS_ONLY = ("concat_responses",)
"""Gradient settings that change how the pass runs, not what it computes (equal up to float
rounding): left out of the feature stores' spec, so stores made either way are reused."""


def prepare_scoring(model: torch.nn.Module, gradient: GradientConfig,
                    projection: ProjectionConfig) -> ScoringSetup:
    """Parameter selection (LoRA on a copy when ``gradient.params == "lora"``) and the projector.

    ``gradient.autocast_bf16 = None`` is resolved here for the model's device, and the resolved
    value is what the feature-store spec records (features made with and without autocast differ
    slightly, so stores made both ways are never mixed)."""
    device = next(model.parameters()).device
    gradient = dataclasses.replace(gradient, autocast_bf16=use_autocast(gradient, device))
    if gradient.params == "lora":
        model = attach_lora(copy.deepcopy(model), gradient.lora_rank)
    trainable = [p.requires_grad for p in model.parameters()]
    params = select_params(model, gradient)
    cache = int(projection.cache_gb * 2**30)
    if projection.kind == "factorized":
        from cropi.influence.projection.factorized import FactorizedProjector

        projector: Projector = FactorizedProjector.from_model(
            model, projection, params=list(zip(params.names, params.params)), cache_bytes=cache)
    else:
        projector = make_projector(projection, params.dim, cache_bytes=cache)
    spec = {"projection": projector.spec(), "params": params.spec(),
            "gradient": {k: v for k, v in dataclasses.asdict(gradient).items() if k not in PASS_ONLY}}
    return ScoringSetup(model, params, projector, spec, gradient, trainable)


def add_timings(total: Timings, part: Timings) -> None:
    """Accumulate ``part`` into ``total`` (in place)."""
    for f in dataclasses.fields(Timings):
        setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
