"""Prompt embeddings for the selection analysis and the embedding-space selection policies.

Two sources, both mean-pooled over the prompt's tokens (padding masked out), float32:

- :func:`hidden_state_embeddings`: the policy model's own last hidden state over the templated
  prompt token ids (the ids beta was sampled with; no extra download, the default);
- :func:`encoder_embeddings`: any Hugging Face encoder (``select.embedding_model``: a local folder,
  or a hub id when online) over the prompt's text (its messages' contents joined by newlines).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cropi.model.loading import bf16_is_fast
from cropi.model.logprobs import (
    cache_kw,
    caches_every_position,
    common_prefix,
    micro_batches,
    new_cache,
)

log = logging.getLogger(__name__)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return ((hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)).cpu().numpy().astype(np.float32)


def hidden_state_embeddings(model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int,
                            max_batch_tokens: int = 8192) -> np.ndarray:
    """``[n, hidden]``: the mean over each prompt's tokens of ``model``'s last hidden state (no
    grad; bf16 autocast where bf16 is fast, the mean in float32).

    The prefix every prompt shares (the chat template's system message, :func:`common_prefix`)
    runs once where the model's cache keeps every position (:func:`caches_every_position`): its
    hidden states are summed once and its keys and values feed every prompt's remainder, which
    runs right-padded in micro-batches within ``max_batch_tokens`` (counting each prompt whole).
    Causal attention makes this the same sum as running each prompt alone.
    """
    if not prompts:
        raise ValueError("no prompts to embed")
    device = next(model.parameters()).device
    common = common_prefix(prompts) if caches_every_position(model) else 0
    rows: dict[int, np.ndarray] = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_is_fast(device)):
        head_sum: torch.Tensor | float = 0.0
        head: list[tuple[torch.Tensor, torch.Tensor]] = []
        if common:
            cache = new_cache(model)
            out = model(input_ids=torch.as_tensor([list(prompts[0][:common])], device=device), use_cache=True,
                        output_hidden_states=True, logits_to_keep=1, **{cache_kw(model): cache})
            head_sum = out.hidden_states[-1][0].float().sum(0)
            head = [(layer.keys, layer.values) for layer in cache.layers]
        for idx in micro_batches([len(p) for p in prompts], max_batch_tokens):
            rests = [list(prompts[i][common:]) for i in idx]
            width = max(len(r) for r in rests)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), common + width), dtype=torch.long)
            mask[:, :common] = 1
            for j, r in enumerate(rests):
                ids[j, :len(r)] = torch.as_tensor(r, dtype=torch.long)
                mask[j, common:common + len(r)] = 1
            kw: dict[str, Any] = {}
            if head:
                cache = new_cache(model)
                for n, (k, v) in enumerate(head):
                    cache.update(k.expand(len(idx), -1, -1, -1), v.expand(len(idx), -1, -1, -1), n)
                kw = {cache_kw(model): cache, "use_cache": True}
            positions = torch.arange(common, common + width).expand(len(idx), -1)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                        output_hidden_states=True, logits_to_keep=1, **kw)
            own = mask[:, common:].to(device).unsqueeze(-1).float()
            sums = (out.hidden_states[-1].float() * own).sum(1) + head_sum
            pooled = (sums / (common + own.sum(1))).cpu().numpy().astype(np.float32)
            rows.update({i: pooled[j] for j, i in enumerate(idx)})
    return np.stack([rows[i] for i in range(len(prompts))])


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """The text an encoder embeds: the messages' contents joined by newlines."""
    return "\n".join(str(m["content"]) for m in messages)


def load_encoder(name: str, device: str = "cpu") -> tuple[Any, Any]:
    """``(tokenizer, model)`` of a Hugging Face encoder (local folder: no network)."""
    from transformers import AutoModel, AutoTokenizer

    local = Path(name).exists()
    tok = AutoTokenizer.from_pretrained(name, local_files_only=local)
    model = AutoModel.from_pretrained(name, local_files_only=local).to(device).eval()
    return tok, model


def encoder_embeddings(name: str, texts: Sequence[str], device: str = "cpu", batch_size: int = 32,
                       max_length: int = 512) -> np.ndarray:
    """``[n, hidden]``: mean-pooled last hidden states of the encoder ``name`` over ``texts``."""
    if not texts:
        raise ValueError("no texts to embed")
    tok, model = load_encoder(name, device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tok(list(texts[start:start + batch_size]), padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt").to(device)
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        out.append(_mean_pool(hidden, enc["attention_mask"]))
    log.info("embedded %d prompts with %s", len(texts), name)
    return np.concatenate(out)


__all__ = ["encoder_embeddings", "hidden_state_embeddings", "load_encoder", "prompt_text"]
