"""How a GRPO stage executes TRL's step, faster on CPUs; the algorithm (samples, loss, update) is the same.

:class:`StageSpeed` names the changes (``FAST``, the default; ``ROUND1``, TRL's own path);
:func:`shared_prefix_logps` is the loss pass that runs each distinct prompt once. The trainer that
uses them is :class:`cropi.train.grpo.StageGRPOTrainer`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from cropi.model.loading import bf16_is_fast
from cropi.model.logprobs import cache_kw, concat_mask, concat_pays, new_cache, takes_4d_mask


@dataclass(frozen=True)
class StageSpeed:
    """How a stage executes TRL's GRPO step; the algorithm (samples, loss, update) is the same.

    ``fast_generation``: sample the step's completions with cropi's decode loop from a shadow copy
    of the policy whose weights are refreshed after every optimizer step (TRL's ``generate`` on
    the policy otherwise). ``bf16_generation``: that shadow is bf16 (2-2.7x faster generation on
    AMX CPUs; slightly off-policy, see docs/speed.md) or fp32 (the policy's own numerics); None
    (default): ``train.generation_dtype``, whose ``auto`` is bf16 where the training device
    computes it natively (``bf16_is_fast``) and fp32 elsewhere (on an AVX2-only CPU a bf16 shadow
    generates ~4x slower). ``shared_prefix``: the loss
    pass runs each distinct prompt once and its K completions on the prompt's KV cache, with the
    LM head on completion positions only (TRL's own pass scores every padded prompt position
    through the LM head on CPUs); the log-probs and gradients equal TRL's within fp32 tolerance
    (tests/train/test_grpo_speed.py). ``concat_completions`` (with ``shared_prefix``): a prompt's
    completions run as ONE sequence on its cache, each attending to the prompt and to itself only
    (:func:`~cropi.model.logprobs.concat_mask`), instead of rows padded to the longest, where that
    costs fewer FLOPs (:func:`~cropi.model.logprobs.concat_pays`); the same log-probs up to float
    rounding. ``ROUND1`` is TRL's own path (all off).
    """

    fast_generation: bool = True
    bf16_generation: bool | None = None
    shared_prefix: bool = True
    concat_completions: bool = True

    def resolved(self, device: Any, generation_dtype: str = "auto") -> StageSpeed:
        """This speed with ``bf16_generation=None`` decided: by ``generation_dtype``
        (``train.generation_dtype``), or for ``device`` when that is ``auto``."""
        if self.bf16_generation is not None:
            return self
        bf16 = bf16_is_fast(device) if generation_dtype == "auto" else generation_dtype == "bf16"
        return dataclasses.replace(self, bf16_generation=bf16)


FAST = StageSpeed()
ROUND1 = StageSpeed(fast_generation=False, bf16_generation=False, shared_prefix=False, concat_completions=False)


def inner_model(model: Any) -> Any:
    """The causal LM under a PEFT wrapper (the one TRL patched with its fused LM head)."""
    return model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model


def shared_prefix_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        logits_to_keep: int, compute_entropy: bool = False, concat: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TRL's per-token completion log-probs (and entropies), computed once per distinct prompt.

    ``input_ids`` is TRL's ``[B, P + C]`` batch (left-padded prompts, right-padded completions,
    ``C = logits_to_keep``). Rows with the same prompt form a group: the prompt minus its last
    token runs once with a KV cache (gradients flow back through the cache), the cache is
    repeated for the group's rows, and [last prompt token, completion tokens up to the group's
    longest completion] runs through TRL's fused LM head (``fused_lm_head=True``, which applies the
    sampling temperature). Returns ``[B, C]`` tensors, 0 on padding, like TRL's pass.
    ``concat``: a group's completions run as one sequence where :func:`_concat_group` takes them.
    """
    b, width = input_ids.shape
    p_len = width - logits_to_keep
    prompt_mask = attention_mask[:, :p_len].bool()
    comp_len = attention_mask[:, p_len:].sum(dim=1).tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(b):
        groups.setdefault(tuple(input_ids[i, :p_len][prompt_mask[i]].tolist()), []).append(i)
    logps = torch.zeros((b, logits_to_keep), dtype=torch.float32, device=input_ids.device)
    ent = torch.zeros_like(logps) if compute_entropy else None
    kw = cache_kw(model)
    for prompt, rows in groups.items():
        n = len(rows)
        c = max(1, int(max(comp_len[i] for i in rows)))
        idx = torch.as_tensor(rows, device=input_ids.device)
        cache = new_cache(inner_model(model))
        prompt_t = torch.as_tensor(prompt, dtype=torch.long, device=input_ids.device)
        if len(prompt) > 1:  # the prefix: no LM head (logits_to_keep=1 is the cheapest the API allows)
            model(input_ids=prompt_t[None, :-1], use_cache=True, logits_to_keep=1, **{kw: cache})
            if concat and _concat_group(model, cache, kw, input_ids[:, p_len:], rows,
                                        [int(comp_len[i]) for i in rows], prompt_t, logps, ent):
                continue
            cache.batch_repeat_interleave(n)
        comp = input_ids[idx, p_len:p_len + c]
        cmask = attention_mask[idx, p_len:p_len + c].bool()
        cont = torch.cat([prompt_t[-1:].expand(n, 1), comp], dim=1)
        labels = torch.cat([torch.full((n, 1), -100, dtype=torch.long, device=comp.device),
                            comp.masked_fill(~cmask, -100)], dim=1)
        out = model(input_ids=cont, labels=labels, fused_lm_head=True,
                    **{kw: cache if len(prompt) > 1 else None})
        logps[idx, :c] = out.log_probs.float()
        if ent is not None:
            ent[idx, :c] = out.entropy.float()
    return logps, ent


def _concat_group(model: Any, cache: Any, kw: str, completions: torch.Tensor, rows: list[int],
                  lengths: list[int], prompt: torch.Tensor, logps: torch.Tensor,
                  ent: torch.Tensor | None) -> bool:
    """One group's completions as ONE sequence on the prompt's (unrepeated) cache: block i is
    [last prompt token, completion i minus its last token] at positions len(prompt) - 1 on,
    scored against completion i (``shift_labels``) through the fused LM head; fills ``logps``
    (and ``ent``) in place. False, with nothing run, where the padded rows cost fewer FLOPs or
    the attention takes no 4D mask."""
    live = [(i, n) for i, n in zip(rows, lengths, strict=True) if n > 0]
    prefix = len(prompt) - 1
    inner = inner_model(model)
    if not live or not takes_4d_mask(inner) or not concat_pays(inner.config, prefix, [n for _, n in live]):
        return False
    device = completions.device
    ids = torch.cat([torch.cat([prompt[-1:], completions[i, :n - 1]]) for i, n in live])
    labels = torch.cat([completions[i, :n] for i, n in live])
    offsets = torch.cat([torch.arange(n, device=device) for _, n in live])
    mask = concat_mask(prefix, [n for _, n in live], device)
    out = model(input_ids=ids[None], position_ids=(prefix + offsets)[None], attention_mask=mask,
                shift_labels=labels[None], fused_lm_head=True, **{kw: cache})
    at = torch.repeat_interleave(torch.as_tensor([i for i, _ in live], device=device),
                                 torch.as_tensor([n for _, n in live], device=device))
    logps[at, offsets] = out.log_probs[0].float()
    if ent is not None:
        ent[at, offsets] = out.entropy[0].float()
    return True
