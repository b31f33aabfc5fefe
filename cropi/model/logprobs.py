"""Teacher-forced per-token log-probs of responses given prompts (one batched forward).

Layout of a batch: prompts are LEFT-padded to a common length P and responses RIGHT-padded to a
common length R, so the logits that predict response tokens sit in the last R+1 columns and
``logits_to_keep = R + 1`` skips the vocabulary projection of every prompt position. Position ids
follow the attention mask, so padding changes nothing but the memory used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def response_logprobs(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                      responses: Sequence[Sequence[int]], pad_id: int,
                      max_batch_tokens: int = 8192) -> list[list[float]]:
    """Per-token log-probs of each response (no grad), in micro-batches within a token budget."""
    device = next(model.parameters()).device
    out: list[list[float]] = []
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
