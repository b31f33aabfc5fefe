"""Teacher-forced per-token log-probs of responses given prompts (one batched forward).

Layout of a batch: prompts are LEFT-padded to a common length P and responses RIGHT-padded to a
common length R, so the logits that predict response tokens sit in the last R+1 columns and
``logits_to_keep = R + 1`` skips the vocabulary projection of every prompt position. Position ids
follow the attention mask, so padding changes nothing but the memory used.

:func:`shared_prefix_logprobs` computes the same values for K responses to ONE prompt with the
prompt run once: the prompt (minus its last token) fills a KV cache that is repeated for the K
rows, then [last prompt token, response] runs on it (K-fold less prompt compute; differentiable,
gradients flow back through the cache). POPI gradients use it, and so do rollouts where they
compute beta's log-probs in a second pass (``rollout.logprob_pass``; where cropi's decode loop
samples from the fp32 model the sampling's own logits give them, equal within fp32 rounding), so
the importance ratios are 1 at stage 0 (exactly, or within fp32 rounding).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    position_ids: torch.Tensor  # [B, P + R]
    response_ids: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R] float, 1 on real response tokens

    @property
    def response_len(self) -> int:
        return int(self.response_ids.shape[1])


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
         device: str | torch.device = "cpu") -> PackedBatch:
    """Left-pad prompts and right-pad responses into one batch."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError("need as many prompts as responses, at least one")
    p_len = max(len(p) for p in prompts)
    r_len = max(1, max(len(r) for r in responses))
    b = len(prompts)
    ids = torch.full((b, p_len + r_len), pad_id, dtype=torch.long)
    mask = torch.zeros((b, p_len + r_len), dtype=torch.long)
    resp = torch.full((b, r_len), pad_id, dtype=torch.long)
    rmask = torch.zeros((b, r_len), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, p_len - len(p):p_len] = torch.as_tensor(p, dtype=torch.long)
        mask[i, p_len - len(p):p_len] = 1
        if r:
            ids[i, p_len:p_len + len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, p_len:p_len + len(r)] = 1
            resp[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
            rmask[i, :len(r)] = 1.0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    to = lambda t: t.to(device)  # noqa: E731
    return PackedBatch(to(ids), to(mask), to(pos), to(resp), to(rmask))


def token_logprobs(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """log pi(a_t | s, a_<t) for every response position: [B, R] float32 (0 on padding).

    Differentiable when called with grad enabled; the log-softmax is taken in float32 whatever
    the model dtype.
    """
    r_len = batch.response_len
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=r_len + 1,
        use_cache=False,
    )
    logits = out.logits[:, :r_len, :].float()
    logp = torch.log_softmax(logits, dim=-1)
    tok = logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    return tok * batch.response_mask


def cache_kw(model: Any) -> str:
    """The forward keyword of a KV cache: ``cache`` (transformers >= 5.24, where
    ``past_key_values`` is deprecated) or ``past_key_values``."""
    inner = model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(type(inner).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model`` (transformers 4.56 and 5.x)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def shared_prefix_logprobs(model: torch.nn.Module, prompt: Sequence[int],
                           responses: Sequence[Sequence[int]], pad_id: int,
                           concat: bool = True) -> torch.Tensor:
    """``token_logprobs(model, pack([prompt] * K, responses))`` with the prompt run once: [K, R].

    Float32 log-softmax, 0 on padding; differentiable when called with grad enabled.
    ``concat`` (default): the K responses run as ONE sequence after the prompt, each attending
    to the prompt and to itself only (:func:`concat_mask`), so no position is padding, when
    :func:`concat_pays` (the masked attention over the whole sequence costs less than the
    padding saves) and the attention kernel takes a 4D mask; else, and with False, one row per
    response, padded to the longest (the earlier pass).
    """
    device = next(model.parameters()).device
    if not prompt:
        raise ValueError("empty prompt")
    if concat and takes_4d_mask(model) and concat_pays(model.config, len(prompt) - 1,
                                                        [len(r) for r in responses]):
        return _concat_logprobs(model, prompt, responses)
    k = len(responses)
    r_len = max(1, max(len(r) for r in responses))
    p = torch.as_tensor(list(prompt), dtype=torch.long, device=device)
    cont = torch.full((k, r_len + 1), pad_id, dtype=torch.long)
    resp = torch.full((k, r_len), pad_id, dtype=torch.long)
    rmask = torch.zeros((k, r_len), dtype=torch.float32)
    for i, r in enumerate(responses):
        if r:
            cont[i, 1:1 + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            resp[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            rmask[i, :len(r)] = 1.0
    cont[:, 0] = p[-1]
    cache, kw = _prompt_cache(model, p)
    if cache is not None:
        cache.batch_repeat_interleave(k)
    out = model(input_ids=cont.to(device), use_cache=cache is not None, **{kw: cache})
    logp = torch.log_softmax(out.logits[:, :r_len, :].float(), dim=-1)
    tok = logp.gather(-1, resp.to(device).unsqueeze(-1)).squeeze(-1)
    return tok * rmask.to(device)


def _prompt_cache(model: torch.nn.Module, prompt: torch.Tensor) -> tuple[Any, str]:
    """A one-row KV cache of ``prompt`` minus its last token (None for a one-token prompt)."""
    kw = cache_kw(model)
    if len(prompt) < 2:
        return None, kw
    cache = new_cache(model)
    model(input_ids=prompt[None, :-1], use_cache=True, logits_to_keep=1, **{kw: cache})
    return cache, kw


def takes_4d_mask(model: Any) -> bool:
    """Whether ``model``'s attention applies a custom 4D mask (sdpa and eager do; flash kernels
    do not)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return impl in ("sdpa", "eager")


def concat_pays(config: Any, prefix: int, lengths: Sequence[int]) -> bool:
    """Whether the concatenated pass costs fewer FLOPs than the padded rows for responses of
    ``lengths`` behind a cached prefix of ``prefix`` tokens.

    Per position, the linear layers and the LM head cost the same in both; per (query, key) pair
    the attention costs about 4 x hidden x layers. The concatenated pass runs sum(lengths)
    positions, each attending over prefix + sum(lengths) keys (masked, but computed); the padded
    rows run K x (1 + longest) positions over prefix + 1 + longest keys. Short, uneven responses
    (RLVR answers) favour concatenating; long responses of similar length (1.5B models with 512
    tokens each) favour the padded rows."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    if not (hidden and layers and lengths):
        return True
    inter = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    per_position = 2 * (layers * (4 * hidden * hidden + 3 * hidden * inter) + hidden * vocab)
    per_pair = 4 * hidden * layers
    total = sum(lengths)
    rows, width = len(lengths), 1 + max(lengths)
    concat = total * per_position + total * (prefix + total) * per_pair
    padded = rows * width * per_position + rows * width * (prefix + width) * per_pair
    return concat < padded


def concat_mask(prefix: int, lengths: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean [1, 1, T, prefix + T] attention mask of blocks of ``lengths`` (T = their sum) laid
    one after the other behind a cached prefix: every position sees the whole prefix and the
    positions of its own block up to itself, nothing of the other blocks."""
    block = torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(list(lengths)))
    pos = torch.cat([torch.arange(n) for n in lengths]) if lengths else torch.zeros(0, dtype=torch.long)
    own = (block[:, None] == block[None, :]) & (pos[None, :] <= pos[:, None])
    full = torch.cat([torch.ones((len(block), prefix), dtype=torch.bool), own], dim=1)
    return full[None, None].to(device)


def _concat_logprobs(model: torch.nn.Module, prompt: Sequence[int],
                     responses: Sequence[Sequence[int]]) -> torch.Tensor:
    """The concatenated pass of :func:`shared_prefix_logprobs`: block i is [last prompt token,
    response i minus its last token] at positions len(prompt) - 1 onwards; its logits predict
    response i."""
    device = next(model.parameters()).device
    k = len(responses)
    r_len = max(1, max(len(r) for r in responses))
    p = torch.as_tensor(list(prompt), dtype=torch.long, device=device)
    cache, kw = _prompt_cache(model, p)
    lengths = [len(r) for r in responses if r]
    out = torch.zeros((k, r_len), dtype=torch.float32, device=device)
    if not lengths:
        return out
    last = int(prompt[-1])
    ids = torch.as_tensor([t for r in responses if r for t in [last, *r[:-1]]], dtype=torch.long, device=device)
    target = torch.as_tensor([t for r in responses for t in r], dtype=torch.long, device=device)
    offsets = torch.cat([torch.arange(n) for n in lengths]).to(device)
    prefix = len(prompt) - 1
    logits = model(input_ids=ids[None], position_ids=(prefix + offsets)[None],
                   attention_mask=concat_mask(prefix, lengths, device), use_cache=cache is not None,
                   **{kw: cache}).logits[0]
    tok = torch.log_softmax(logits.float(), dim=-1).gather(-1, target[:, None]).squeeze(-1)
    rows = torch.repeat_interleave(torch.as_tensor([i for i, r in enumerate(responses) if r]),
                                   torch.as_tensor(lengths)).to(device)
    return out.index_put((rows, offsets), tok)


def prompt_groups(prompts: Sequence[Sequence[int]], lengths: Sequence[int],
                  max_batch_tokens: int) -> list[list[int]]:
    """Runs of consecutive rows with the same prompt, cut so that rows x longest stays in budget."""
    groups: list[list[int]] = []
    for i in range(len(prompts)):
        if groups and list(prompts[groups[-1][0]]) == list(prompts[i]) and \
                max(lengths[j] for j in groups[-1] + [i]) * (len(groups[-1]) + 1) <= max_batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def prefix_groups(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                  max_batch_tokens: int) -> list[list[int]]:
    """The micro-batches of :func:`shared_prefix_logprobs` calls: runs of rows with the same
    prompt, rows x (1 + the longest) within the budget (a bound on either pass's positions)."""
    return prompt_groups(prompts, [1 + len(r) for r in responses], max_batch_tokens)


def response_logprobs(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                      responses: Sequence[Sequence[int]], pad_id: int,
                      max_batch_tokens: int = 8192, share_prompts: bool = False,
                      concat: bool = True) -> list[list[float]]:
    """Per-token log-probs of each response (no grad), in micro-batches within a token budget.

    ``share_prompts``: consecutive rows with the same prompt run as one
    :func:`shared_prefix_logprobs` call (with ``concat``), the budget counting rows x (1 + the
    longest).
    """
    device = next(model.parameters()).device
    out: list[list[float]] = []
    if share_prompts:
        for idx in prefix_groups(prompts, responses, max_batch_tokens):
            with torch.no_grad():
                lp = shared_prefix_logprobs(model, prompts[idx[0]], [responses[i] for i in idx],
                                            pad_id, concat).cpu()
            out.extend(lp[j, :len(responses[i])].tolist() for j, i in enumerate(idx))
        return out
    for idx in micro_batches([len(p) + len(r) for p, r in zip(prompts, responses, strict=True)],
                             max_batch_tokens):
        batch = pack([prompts[i] for i in idx], [responses[i] for i in idx], pad_id, device)
        with torch.no_grad():
            lp = token_logprobs(model, batch).cpu()
        out.extend(lp[j, :len(responses[i])].tolist() for j, i in enumerate(idx))
    return out


def micro_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Split positions 0..n-1 (in order) into groups whose padded size stays within the budget."""
    groups: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        longest_if = max(longest, n)
        if cur and longest_if * (len(cur) + 1) > max_batch_tokens:
            groups.append(cur)
            cur, longest_if = [], n
        cur.append(i)
        longest = longest_if
    if cur:
        groups.append(cur)
    return groups


def common_prefix(prompts: Sequence[Sequence[int]], min_len: int = 8) -> int:
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


def caches_every_position(model: Any) -> bool:
    """Whether every layer of ``model``'s cache keeps all positions' keys and values (transformers'
    ``DynamicLayer``; sliding-window or recurrent layers keep other state), so that a prefix's
    cache can be expanded and shared by several rows."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(new_cache(model), "layers", None)
    return bool(layers) and all(type(x) is DynamicLayer for x in layers)
