"""Samplers: turn templated prompts into K sampled responses each.

``Sampler`` is the extension point; ``HFSampler`` uses transformers ``generate`` with a KV cache and
left padding, in the dtype given (bf16 is ~1.4x faster than fp32 on CPUs with AMX from batch 8 up).
Other backends register a factory under their ``rollout.backend`` name with
:func:`register_sampler`; the vLLM backend lives in ``cropi.scale.vllm`` (a higher layer), which
registers itself when imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from cropi.config import RolloutConfig
from cropi.utils.errors import CropiError


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False


class Sampler(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 seed: int) -> list[list[list[int]]]:
        """For each prompt, ``params.n`` responses as token ids (EOS kept when generated)."""
        ...


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a response: the model's generation config, else the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
    return {int(e) for e in eos}


SamplerFactory = Callable[[torch.nn.Module, Any, RolloutConfig, str], Sampler]
"""``(fp32 model, tokenizer, cfg, model folder holding the same weights) -> Sampler``."""

_SAMPLERS: dict[str, SamplerFactory] = {}


def register_sampler(backend: str, factory: SamplerFactory) -> None:
    """Register a ``rollout.backend``; duplicate names are rejected."""
    if backend in _SAMPLERS:
        raise ValueError(f"sampler backend {backend!r} is already registered")
    _SAMPLERS[backend] = factory


def make_sampler(backend: str, model: torch.nn.Module, tokenizer: Any, cfg: RolloutConfig,
                 model_path: str) -> Sampler:
    """The registered sampler of ``backend`` (not ``hf``: see ``cropi.rollout.collect``)."""
    factory = _SAMPLERS.get(backend)
    if factory is None:
        raise CropiError(f"the {backend!r} rollout backend is not loaded", field="rollout.backend",
                         fix=f"import cropi.scale.{backend} first (the cropi CLI does), "
                             "or use rollout.backend=hf")
    return factory(model, tokenizer, cfg, model_path)


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> list[int]:
    out: list[int] = []
    for t in ids:
        out.append(int(t))
        if t in eos_ids:
            break
    return out


class HFSampler:
    """Batched sampling with ``model.generate``; one call = one batch of prompts x n."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = eos_token_ids(model, tokenizer)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 seed: int) -> list[list[list[int]]]:
        device = next(self.model.parameters()).device
        rows = [list(p) for p in prompts for _ in range(params.n)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.as_tensor(r)
            mask[i, width - len(r):] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, pad_token_id=self.pad_id,
                                      eos_token_id=sorted(self.eos_ids))
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        gen = out[:, width:].cpu().tolist()
        resp = [cut_at_eos(g, self.eos_ids) for g in gen]
        return [resp[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]
