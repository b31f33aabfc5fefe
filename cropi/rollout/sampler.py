"""Samplers: turn templated prompts into K sampled responses each.

``Sampler`` is the extension point; ``HFSampler`` decodes with :func:`decode` (a KV-cache loop that
runs each distinct prompt once for its n responses and drops finished rows from the batch), or with
transformers ``generate`` (``fast=False``, the round-1 path), in the dtype of the model it is given
(bf16 is ~1.4-2.7x faster than fp32 on CPUs with AMX).
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
from cropi.model.logprobs import cache_kw, new_cache
from cropi.rollout.backends import SAMPLERS
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

def register_sampler(backend: str, factory: SamplerFactory) -> None:
    """Register a ``rollout.backend`` (:data:`cropi.rollout.backends.SAMPLERS`); duplicate names
    are rejected."""
    SAMPLERS.register(backend, factory)


def make_sampler(backend: str, model: torch.nn.Module, tokenizer: Any, cfg: RolloutConfig,
                 model_path: str) -> Sampler:
    """The registered sampler of ``backend`` for ``model`` (loaded from ``model_path``)."""
    return SAMPLERS.get(backend, field="rollout.backend")(model, tokenizer, cfg, model_path)


def _pick(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens from float32 logits [B, V]: argmax, or a draw at ``temperature`` / ``top_p``
    (the nucleus rule of transformers' ``TopPLogitsWarper``; no top-k)."""
    if greedy:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    # inverse-CDF draw: one uniform per row (torch.multinomial draws one exponential per vocab entry)
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand((cdf.shape[0], 1), generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp(max=cdf.shape[1] - 1)


def _common_prefix(prompts: Sequence[Sequence[int]], min_len: int = 8) -> int:
    """Length of the prefix all prompts share, leaving every prompt at least one token of its own
    (0 when shorter than ``min_len`` or for a single prompt)."""
    if len(prompts) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return n if n >= min_len else 0


def _prefill(model: Any, prompts: Sequence[Sequence[int]], n: int, pad_id: int) -> tuple[Any, ...]:
    """Run ``prompts`` into a fresh cache: (cache, last logits, mask, next positions), n rows each.

    The prefix all prompts share (the chat template's system message) runs once; each prompt's
    remainder runs once, padded between the shared prefix and the remainder (position ids follow
    the mask, ``logits_to_keep=1``); cache, logits and mask are then repeated for its ``n`` rows.
    """
    device = next(model.parameters()).device
    common = _common_prefix(prompts)
    cache = new_cache(model)
    kw = {cache_kw(model): cache}
    if common:
        model(input_ids=torch.as_tensor([list(prompts[0][:common])], device=device),
              use_cache=True, logits_to_keep=1, **kw)
        cache.batch_repeat_interleave(len(prompts))
    rests = [list(p[common:]) for p in prompts]
    width = max(len(p) for p in rests)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), common + width), dtype=torch.long)
    mask[:, :common] = 1
    for i, p in enumerate(rests):
        ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[i, common + width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, common:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kw)
    logits = out.logits[:, -1].float()
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    return cache, logits, mask, mask.sum(-1)


def _can_merge(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x).__name__ == "DynamicLayer" for x in layers)


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    extra = length - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _merge(cache: Any, mask: torch.Tensor, new_cache_: Any, new_mask: torch.Tensor) -> torch.Tensor:
    """Append the rows of ``new_cache_`` to ``cache`` (in place); the shorter side is left-padded
    with zero keys/values under a zero mask. Returns the merged mask."""
    length = max(mask.shape[1], new_mask.shape[1])
    for old, new in zip(cache.layers, new_cache_.layers, strict=True):
        old.keys = torch.cat([_left_pad(old.keys, length, 2), _left_pad(new.keys, length, 2)], dim=0)
        old.values = torch.cat([_left_pad(old.values, length, 2), _left_pad(new.values, length, 2)], dim=0)
    return torch.cat([_left_pad(mask, length, 1), _left_pad(new_mask, length, 1)], dim=0)


def decode(model: Any, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
           eos_ids: set[int], pad_id: int, *, greedy: bool = False, temperature: float = 1.0,
           top_p: float = 1.0, seed: int = 0, max_rows: int | None = None) -> list[list[int]]:
    """``n`` responses per prompt (prompt-major rows), EOS kept, with a KV cache.

    Prompts enter the batch through :func:`_prefill` (shared prefix once, each prompt once for
    its n rows). A row that emits an EOS or reaches ``max_new_tokens`` leaves the batch (its cache
    rows are dropped). With ``max_rows`` (default: every row at once), at most that many rows
    decode together: when half of them have ended, the next prompts in order are prefilled and
    join the running batch (continuous batching), so a long straggler no longer decodes alone.
    Sampling uses a ``torch.Generator`` seeded with ``seed``: the same call gives the same tokens.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    eos = torch.as_tensor(sorted(eos_ids), dtype=torch.long, device=device)
    rows_max = max(n, max_rows or len(prompts) * n)
    result: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    nxt = 0  # next prompt to admit
    cache: Any = None
    alive = torch.zeros(0, dtype=torch.long, device=device)
    logits = mask = next_pos = count = None
    with torch.inference_mode():
        while True:
            room = (rows_max - len(alive)) // n
            fresh = cache is None or len(alive) == 0
            if nxt < len(prompts) and room > 0 and (fresh or (len(alive) <= rows_max // 2 and _can_merge(cache))):
                take = list(range(nxt, min(len(prompts), nxt + room)))
                nxt = take[-1] + 1
                c2, l2, m2, p2 = _prefill(model, [prompts[i] for i in take], n, pad_id)
                ids2 = torch.as_tensor([i * n + j for i in take for j in range(n)], device=device)
                if fresh:
                    cache, logits, mask, next_pos, alive = c2, l2, m2, p2, ids2
                    count = torch.zeros(len(ids2), dtype=torch.long, device=device)
                else:  # join the running batch
                    mask = _merge(cache, mask, c2, m2)
                    logits = torch.cat([logits, l2])
                    next_pos = torch.cat([next_pos, p2])
                    alive = torch.cat([alive, ids2])
                    count = torch.cat([count, torch.zeros(len(ids2), dtype=torch.long, device=device)])
            if len(alive) == 0:
                break
            tok = _pick(logits, greedy, temperature, top_p, gen)
            for r, t in zip(alive.tolist(), tok.tolist(), strict=True):
                result[r].append(t)
            count = count + 1
            keep = ~torch.isin(tok, eos) & (count < max_new_tokens)
            if not bool(keep.all()):
                sel = keep.nonzero().squeeze(1)
                if len(sel) == 0:
                    alive = alive[sel]
                    cache = None
                    continue
                cache.batch_select_indices(sel)
                alive, tok, mask, next_pos, count = alive[sel], tok[sel], mask[sel], next_pos[sel], count[sel]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                        use_cache=True, **{cache_kw(model): cache})
            next_pos = next_pos + 1
            logits = out.logits[:, -1].float()
    return result


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> list[int]:
    out: list[int] = []
    for t in ids:
        out.append(int(t))
        if t in eos_ids:
            break
    return out


class HFSampler:
    """Batched sampling; one call = one batch of prompts x n.

    ``fast`` (default): :func:`decode`, at most ``max_rows`` rows at a time (continuous
    batching; None: all rows of the call together). ``fast=False``: transformers ``model.generate`` on the
    repeated, left-padded prompts with every row kept to the end (the round-1 path).
    """

    def __init__(self, model: Any, tokenizer: Any, fast: bool = True, max_rows: int | None = None) -> None:
        self.model = model
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.fast = fast
        self.max_rows = max_rows  # fast: rows decoded together (None: all of a call's rows)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 seed: int) -> list[list[list[int]]]:
        if self.fast:
            flat = decode(self.model, prompts, params.n, params.max_new_tokens, self.eos_ids, self.pad_id,
                          greedy=params.greedy, temperature=params.temperature, top_p=params.top_p,
                          seed=seed, max_rows=self.max_rows)
            return [flat[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]
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
