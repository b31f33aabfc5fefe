"""cropi's decode loop: ``n`` sampled (or greedy) responses per prompt, with the KV cache in slots.

The keys and values of every layer live in buffers allocated once, ``[rows, kv heads, columns,
head dim]``. A decode step writes one column in place (no concatenation of the whole cache per
step, which transformers' ``DynamicCache`` does). A row whose response ends stays in the batch
until prompts waiting for room are prefilled into its slot (continuous batching): the rows that
decode together stay near ``max_rows`` instead of thinning out as responses end, which is what a
CPU needs, where a step's matrix products run at a fraction of their rate for a few rows. Each
row's tokens sit right-aligned in the columns, left of them a zero mask; position ids follow the
row's own tokens, so where a row sits changes nothing it attends to. When the columns are full
they are shifted left past what no live row uses. When no prompt waits and an eighth of the
rows have ended, the live rows are gathered into fewer (an ended row is computed until then).

The prefix every prompt shares (the chat template's system message) is run once per call; each
admitted prompt runs its remainder once for its ``n`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from transformers.cache_utils import DynamicLayer

from cropi.model.logprobs import (
    cache_kw,
    caches_every_position,
    common_prefix,
    new_cache,
)


def _pick(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens from float32 (or float64) logits [B, V]: argmax, or a draw at ``temperature`` / ``top_p``
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


def decodes_in_slots(model: Any) -> bool:
    """Whether :func:`decode` handles ``model``: every layer caches all positions
    (:func:`cropi.model.logprobs.caches_every_position`)."""
    return caches_every_position(model)


class _SlotLayer(DynamicLayer):
    """One layer's keys and values in preallocated buffers; ``keys``/``values`` are views of the
    rows and columns in use, and ``update`` writes the step's columns in place."""

    def __init__(self, buffers: tuple[torch.Tensor, torch.Tensor], rows: int, length: int) -> None:
        super().__init__()
        self.kbuf, self.vbuf = buffers
        self.device, self.is_initialized = self.kbuf.device, True
        self.set_view(rows, length)

    def set_view(self, rows: int, length: int) -> None:
        self.rows, self.length = rows, length
        self.keys = self.kbuf[:rows, :, :length]
        self.values = self.vbuf[:rows, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        self.kbuf[:self.rows, :, self.length:end] = key_states
        self.vbuf[:self.rows, :, self.length:end] = value_states
        self.set_view(self.rows, end)
        return self.keys, self.values


class Decoded(NamedTuple):
    """What :func:`decode_scored` gives: prompt-major responses, their tokens' log-probs, and per
    prompt the mean of the model's last hidden state over its tokens (float32 or float64,
    ``[prompts, hidden]``)."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    embeddings: torch.Tensor


class _Prefix(NamedTuple):
    """The shared prefix: every layer's keys and values, and the sum of its last hidden states
    (over its positions; 0 without a prefix or without embeddings)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    hidden_sum: torch.Tensor | float


class _Slots:
    """The decode state of up to ``capacity_rows`` rows: KV slots, masks, positions, logits, and
    which response each row writes (``row`` -1: free). With ``embed``, each admitted prompt's
    mean last hidden state goes to ``embeddings`` (by prompt index)."""

    def __init__(self, model: Any, prefix: _Prefix, capacity_rows: int, columns: int, embed: bool = False) -> None:
        self.model, self.capacity_rows = model, capacity_rows
        self.prefix, self.prefix_sum = prefix.kv, prefix.hidden_sum
        self.embed = embed
        self.embeddings: dict[int, torch.Tensor] = {}
        self.device = next(model.parameters()).device
        self.cache: Any = None  # a DynamicCache of _SlotLayers, made at the first admission
        self.rows, self.length, self.columns = 0, 0, columns
        self.mask = torch.zeros((capacity_rows, columns), dtype=torch.long, device=self.device)
        self.row = torch.full((capacity_rows,), -1, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(capacity_rows, dtype=torch.long, device=self.device)
        self.count = torch.zeros(capacity_rows, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(0)

    def _alloc(self, like: torch.Tensor, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value buffers of ``capacity_rows`` rows shaped like ``like`` [*, heads, *, dim],
        left uninitialised: a column is written (or zeroed) before any row in use reads it, and
        zeroing it all at once would touch every page of a large allocation for nothing."""
        shape = (self.capacity_rows, like.shape[1], columns, like.shape[3])
        return (like.new_empty(shape), like.new_empty(shape))

    def _first(self, prefill: Any, logits: torch.Tensor) -> None:
        """Allocate the slots after the first prefill: its layers give heads, dims and dtype; the
        logits are kept in float32 (float64 for a float64 model)."""
        self.cache = new_cache(self.model)
        self.cache.layers = [_SlotLayer(self._alloc(layer.keys, self.columns), 0, 0) for layer in prefill.layers]
        self.logits = torch.empty((self.capacity_rows, logits.shape[-1]),
                                  dtype=torch.promote_types(logits.dtype, torch.float32), device=self.device)

    @property
    def layers(self) -> list[_SlotLayer]:
        return self.cache.layers

    def free(self) -> torch.Tensor:
        return (self.row < 0).nonzero().squeeze(1)

    def live(self) -> int:
        return int((self.row[:self.rows] >= 0).sum())

    def _buffers(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in (layer.kbuf, layer.vbuf)] + [self.mask]

    def _grow(self, columns: int) -> None:
        """New buffers of ``columns`` columns holding the same content (rarely: a fresh allocation
        of a large tensor page-faults its memory in)."""
        for layer in self.layers:
            for name in ("kbuf", "vbuf"):
                old = getattr(layer, name)
                new = old.new_empty((old.shape[0], old.shape[1], columns, old.shape[3]))
                new[:, :, :self.columns] = old
                setattr(layer, name, new)
        mask = self.mask.new_zeros((self.mask.shape[0], columns))
        mask[:, :self.columns] = self.mask
        self.mask, self.columns = mask, columns

    def _shift(self, start: int, offset: int) -> None:
        """Move columns [start, length) of the rows in use to ``offset``, in place: in blocks no
        wider than the shift, so no block overlaps a source not yet moved; columns vacated on the
        left (a shift right) get a zero mask."""
        width, step = self.length - start, abs(offset - start)
        blocks = range(0, width, step)
        for b in (blocks if offset < start else reversed(blocks)):
            w = min(step, width - b)
            for t in self._buffers():
                cols = t if t.dim() == 2 else t.transpose(1, 2)  # [rows, columns, ...]
                cols[:self.rows, offset + b:offset + b + w] = cols[:self.rows, start + b:start + b + w]
        if offset > start:  # vacated columns: masked, and zeroed (they may never have been written)
            self.mask[:self.rows, start:offset] = 0
            for layer in self.layers:
                layer.kbuf[:self.rows, :, start:offset] = 0
                layer.vbuf[:self.rows, :, start:offset] = 0
        self.length = offset + width
        self._view()

    def _view(self) -> None:
        for layer in self.layers:
            layer.set_view(self.rows, self.length)

    def admit(self, prompts: Sequence[Sequence[int]], n: int, rows: Sequence[int], pad_id: int) -> None:
        """Prefill ``prompts`` (each after the shared prefix) into free slots, ``n`` rows each,
        writing responses ``rows`` (prompt-major)."""
        common = self.prefix[0][0].shape[2] if self.prefix else 0
        rests = [list(p[common:]) for p in prompts]
        width = max(len(r) for r in rests)
        ids = torch.full((len(rests), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rests), common + width), dtype=torch.long)
        mask[:, :common] = 1
        for i, r in enumerate(rests):
            ids[i, width - len(r):] = torch.as_tensor(r, dtype=torch.long)
            mask[i, common + width - len(r):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = new_cache(self.model)
        for i, (k, v) in enumerate(self.prefix):
            cache.update(k.expand(len(rests), -1, -1, -1), v.expand(len(rests), -1, -1, -1), i)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos[:, common:], use_cache=True,
                         logits_to_keep=1, output_hidden_states=self.embed, **{cache_kw(self.model): cache})
        if self.embed:  # the mean over prefix and own tokens (causal: as if each prompt ran alone)
            last = out.hidden_states[-1]
            own = mask[:, common:].unsqueeze(-1).to(torch.promote_types(last.dtype, torch.float32))
            means = ((last.to(own.dtype) * own).sum(1) + self.prefix_sum) / (common + own.sum(1))
            for j in range(len(rests)):
                self.embeddings[rows[j * n] // n] = means[j]
        if self.cache is None:
            self._first(cache, out.logits)
        span = common + width
        if span > self.length:  # the new rows need more columns on the left than the cache has
            if self.columns < 2 * span:
                self._grow(2 * span)
            self._shift(0, span - self.length)
        slots = self.free()[:len(rows)]
        if int(slots.max()) >= self.rows:
            self.rows = int(slots.max()) + 1
            self._view()
        which = torch.arange(len(rests), device=self.device).repeat_interleave(n)
        lo = self.length - span
        for layer, new in zip(self.layers, cache.layers, strict=True):
            layer.kbuf[slots, :, lo:self.length] = new.keys[which]
            layer.vbuf[slots, :, lo:self.length] = new.values[which]
            layer.kbuf[slots, :, :lo] = 0  # masked, but read: finite (a previous row's, or never written)
            layer.vbuf[slots, :, :lo] = 0
        self.mask[slots] = 0
        self.mask[slots, lo:self.length] = mask[which]
        self.logits[slots] = out.logits[:, -1][which].to(self.logits.dtype)
        self.pos[slots] = mask.sum(-1)[which]
        self.count[slots] = 0
        self.row[slots] = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)

    def gather_live(self) -> None:
        """Keep only the live rows, in order, in place (after the last admission, when an eighth
        of them have ended): row i takes live row keep[i] >= i, which no earlier move overwrote."""
        keep = (self.row[:self.rows] >= 0).nonzero().squeeze(1).tolist()
        for i, r in enumerate(keep):
            if i != r:
                for t in self._buffers() + [self.row, self.pos, self.count, self.logits]:
                    t[i] = t[r]
        self.row[len(keep):] = -1
        self.rows = len(keep)
        self._view()

    def step(self, tok: torch.Tensor) -> None:
        """Feed ``tok`` (one per row in use) and keep the next logits."""
        if self.length == self.columns:  # drop columns no live row uses, or grow
            live = self.mask[:self.rows][self.row[:self.rows] >= 0]
            first = int((live != 0).int().argmax(1).min()) if len(live) else self.length - 1
            if first >= self.columns // 4:
                self._shift(first, 0)
            else:
                self._grow(2 * self.columns)
        self.mask[:self.rows, self.length] = 1
        out = self.model(input_ids=tok[:, None], attention_mask=self.mask[:self.rows, :self.length + 1],
                         position_ids=self.pos[:self.rows, None], use_cache=True,
                         **{cache_kw(self.model): self.cache})
        self.length += 1  # the layers' views moved on in update
        self.pos[:self.rows] += self.row[:self.rows] >= 0  # an ended row keeps its last position
        self.logits[:self.rows] = out.logits[:, -1]


def _prefix_kv(model: Any, prefix: Sequence[int], embed: bool = False) -> _Prefix:
    """Keys and values of every layer for ``prefix`` (one row; none for no prefix), and with
    ``embed`` the sum of its last hidden states."""
    if not prefix:
        return _Prefix([], 0.0)
    device = next(model.parameters()).device
    cache = new_cache(model)
    out = model(input_ids=torch.as_tensor([list(prefix)], device=device), use_cache=True, logits_to_keep=1,
                output_hidden_states=embed, **{cache_kw(model): cache})
    last = out.hidden_states[-1][0] if embed else None
    hidden_sum = last.to(torch.promote_types(last.dtype, torch.float32)).sum(0) if last is not None else 0.0
    return _Prefix([(layer.keys, layer.values) for layer in cache.layers], hidden_sum)


def decode(model: Any, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
           eos_ids: set[int], pad_id: int, *, greedy: bool = False, temperature: float = 1.0,
           top_p: float = 1.0, seed: int = 0, max_rows: int | None = None) -> list[list[int]]:
    """``n`` responses per prompt (prompt-major rows), EOS kept; the model must pass
    :func:`decodes_in_slots`.

    At most ``max_rows`` rows decode together (default: every row of the call). Prompts are
    admitted in order, each with its ``n`` rows, whenever an eighth of the rows (at least ``n``)
    are free; a row that emits an EOS or reaches ``max_new_tokens`` frees its slot. Sampling uses a
    ``torch.Generator`` seeded with ``seed``: the same call gives the same tokens.
    """
    return _decode(model, prompts, n, max_new_tokens, eos_ids, pad_id, greedy, temperature, top_p, seed,
                   max_rows, scored=False).tokens


def decode_scored(model: Any, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
                  eos_ids: set[int], pad_id: int, *, temperature: float = 1.0, top_p: float = 1.0,
                  seed: int = 0, max_rows: int | None = None) -> Decoded:
    """:func:`decode` (sampled; the same tokens with the same arguments) with what its forward
    passes give besides: per response, the model's log-prob of each of its tokens at temperature
    1 (``log_softmax`` of the logits the token was drawn from, before temperature and nucleus),
    what a teacher-forced pass over ``[prompt, response]`` computes; per prompt, the mean of the
    last hidden state over the prompt's tokens (from its prefill), what
    :func:`cropi.influence.embeddings.hidden_state_embeddings` computes."""
    return _decode(model, prompts, n, max_new_tokens, eos_ids, pad_id, False, temperature, top_p, seed,
                   max_rows, scored=True)


def _decode(model: Any, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int, eos_ids: set[int],
            pad_id: int, greedy: bool, temperature: float, top_p: float, seed: int, max_rows: int | None,
            scored: bool) -> Decoded:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    eos = torch.as_tensor(sorted(eos_ids), dtype=torch.long, device=device)
    rows_max = max(n, max_rows or len(prompts) * n)
    unit = max(n, rows_max // 8)
    result: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    logprobs: list[list[float]] = [[] for _ in result] if scored else []
    if not prompts:
        return Decoded(result, logprobs, torch.zeros((0, model.config.hidden_size)))
    with torch.inference_mode():
        prefix = _prefix_kv(model, prompts[0][:common_prefix(prompts)], embed=scored)
        longest = max(len(p) for p in prompts)
        slots = _Slots(model, prefix, min(rows_max, len(prompts) * n), 2 * (longest + max_new_tokens),
                       embed=scored)
        nxt = 0  # next prompt to admit
        while True:
            room = len(slots.free()) // n
            if nxt < len(prompts) and room > 0 and (room * n >= unit or slots.live() == 0):
                take = range(nxt, min(len(prompts), nxt + room))
                nxt = take[-1] + 1
                slots.admit([prompts[i] for i in take], n, [i * n + j for i in take for j in range(n)], pad_id)
            live = slots.row[:slots.rows] >= 0
            if not bool(live.any()):
                break
            logits = slots.logits[:slots.rows]
            tok = _pick(logits, greedy, temperature, top_p, gen)
            rows = slots.row[:slots.rows][live].tolist()
            for r, t in zip(rows, tok[live].tolist(), strict=True):
                result[r].append(t)
            if scored:
                lp = logits.gather(1, tok[:, None]).squeeze(1) - logits.logsumexp(-1)
                for r, v in zip(rows, lp[live].tolist(), strict=True):
                    logprobs[r].append(v)
            slots.count[:slots.rows] += 1
            ended = live & (torch.isin(tok, eos) | (slots.count[:slots.rows] >= max_new_tokens))
            slots.row[:slots.rows][ended] = -1
            if nxt == len(prompts):
                left = slots.live()
                if left == 0:
                    break
                if 8 * (slots.rows - left) >= slots.rows:  # an eighth of the rows ended: compute no more of them
                    keep = slots.row[:slots.rows] >= 0
                    slots.gather_live()
                    tok = tok[keep]
            slots.step(tok)
    embeddings = (torch.stack([slots.embeddings[i] for i in range(len(prompts))]) if scored
                  else torch.zeros((0, model.config.hidden_size)))
    return Decoded(result, logprobs, embeddings)
