"""Samplers: turn templated prompts into K sampled responses each.

``Sampler`` is the extension point; ``HFSampler`` decodes with :func:`cropi.rollout.decode.decode`
(a KV-cache loop that runs each distinct prompt once for its n responses and keeps the batch full
by admitting waiting prompts into the slots of ended rows), or with transformers ``generate``
(``fast=False``, the round-1 path, and for models whose cache the loop does not handle), in the
dtype of the model it is given (bf16 is ~1.4-2.7x faster than fp32 on CPUs with AMX).
Other backends register a factory under their ``rollout.backend`` name with
:func:`register_sampler`; the vLLM backend lives in ``cropi.scale.vllm`` (a higher layer), which
registers itself when imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import torch

from cropi.config import RolloutConfig
from cropi.rollout.backends import SAMPLERS
from cropi.rollout.decode import decode, decode_scored, decodes_in_slots

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False


class Scored(NamedTuple):
    """Responses grouped by prompt with what the sampling computed besides
    (:meth:`HFSampler.generate_scored`)."""

    responses: list[list[list[int]]]
    logprobs: list[list[list[float]]]  # per token, untempered
    embeddings: np.ndarray  # [prompts, hidden] float32: mean last hidden state over each prompt's tokens


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

def register_sampler(backend: str, factory: SamplerFactory) -> None:
    """Register a ``rollout.backend`` (:data:`cropi.rollout.backends.SAMPLERS`); duplicate names
    are rejected."""
    SAMPLERS.register(backend, factory)


def make_sampler(backend: str, model: torch.nn.Module, tokenizer: Any, cfg: RolloutConfig,
                 model_path: str) -> Sampler:
    """The registered sampler of ``backend`` for ``model`` (loaded from ``model_path``)."""
    return SAMPLERS.get(backend, field="rollout.backend")(model, tokenizer, cfg, model_path)


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> list[int]:
    out: list[int] = []
    for t in ids:
        out.append(int(t))
        if t in eos_ids:
            break
    return out


def _per_prompt(rows: list[T], n: int) -> list[list[T]]:
    """Prompt-major rows, ``n`` per prompt, grouped by prompt."""
    return [rows[i:i + n] for i in range(0, len(rows), n)]


class HFSampler:
    """Batched sampling; one call = one batch of prompts x n.

    ``fast`` (default): :func:`decode`, at most ``max_rows`` rows at a time (continuous
    batching; None: all rows of the call together). ``fast=False``, or a model with sliding-window
    or recurrent layers (:func:`decodes_in_slots`): transformers ``model.generate`` on the repeated,
    left-padded prompts with every row kept to the end (the round-1 path).
    """

    def __init__(self, model: Any, tokenizer: Any, fast: bool = True, max_rows: int | None = None) -> None:
        self.model = model
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.fast = fast
        self.max_rows = max_rows  # fast: rows decoded together (None: all of a call's rows)
        self.slots = fast and decodes_in_slots(model)

    @property
    def exact_logprobs(self) -> bool:
        """Whether :meth:`generate_scored` can give the log-probs: the decode loop on an fp32
        model, whose logits are the fp32 model's own (a bf16 copy's are not)."""
        return self.slots and next(self.model.parameters()).dtype == torch.float32

    def generate_scored(self, prompts: Sequence[Sequence[int]], params: SamplingParams, seed: int) -> Scored:
        """:meth:`generate` (sampled; the same tokens) with the sampling model's log-prob at
        temperature 1 of each generated token, from the logits it was drawn from, and each
        prompt's mean last hidden state, from its prefill (:func:`decode_scored`); only where
        :attr:`exact_logprobs`."""
        if not self.exact_logprobs or params.greedy:
            raise ValueError("generate_scored needs sampling by the decode loop from an fp32 model")
        out = decode_scored(self.model, prompts, params.n, params.max_new_tokens, self.eos_ids, self.pad_id,
                            temperature=params.temperature, top_p=params.top_p, seed=seed, max_rows=self.max_rows)
        return Scored(_per_prompt(out.tokens, params.n), _per_prompt(out.logprobs, params.n),
                      out.embeddings.float().cpu().numpy())

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 seed: int) -> list[list[list[int]]]:
        if self.slots:
            flat = decode(self.model, prompts, params.n, params.max_new_tokens, self.eos_ids, self.pad_id,
                          greedy=params.greedy, temperature=params.temperature, top_p=params.top_p,
                          seed=seed, max_rows=self.max_rows)
            return _per_prompt(flat, params.n)
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
        return _per_prompt([cut_at_eos(g, self.eos_ids) for g in gen], params.n)
