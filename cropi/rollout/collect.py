"""Offline rollouts of the behaviour policy beta: K responses per prompt, rewards, log-probs.

Work is split into chunks of ``chunk_rows // K`` prompts at fixed positions (K: the first round's
responses per prompt); chunk ``c`` is sampled in one sampler call (``batch_size`` rows decoding at a
time) with the seed ``derive_seed(seed, set_name, c)`` and written as its own Parquet part. A run killed at
any point resumes at the first missing part and ends with the same files as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cropi.config import RolloutConfig
from cropi.data.schema import PromptRecord
from cropi.model.limits import check_prompts_fit
from cropi.model.loading import bf16_is_fast
from cropi.model.logprobs import response_logprobs
from cropi.model.template import prompt_token_ids
from cropi.rollout import store
from cropi.rollout.sampler import HFSampler, Sampler, SamplingParams, Scored, make_sampler
from cropi.utils.progress import track
from cropi.utils.seeding import derive_seed
from cropi.utils.work import Work
from cropi.verify import verify

log = logging.getLogger(__name__)


@dataclass
class Policy:
    """The model bundle a rollout needs: tokenizer, fp32 scoring model, sampler."""

    tokenizer: Any
    model: torch.nn.Module  # fp32: beta's log-probs (teacher-forced, or the sampling's own)
    sampler: Sampler
    system_prompt: str | None = None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def prompt_ids(self, record: PromptRecord) -> list[int]:
        return prompt_token_ids(self.tokenizer, record.prompt, self.system_prompt)

    def check_fit(self, records: Sequence[PromptRecord], max_new_tokens: int, setting: str,
                  where: str | None = None) -> None:
        """Refuse (one-line CropiError) a record whose prompt plus ``max_new_tokens`` exceeds the
        model's context; call it before generating anything for ``records``."""
        check_prompts_fit(self.tokenizer, records, max_new_tokens, setting=setting,
                          system_prompt=self.system_prompt, model=self.model, where=where)


def generation_dtype(name: str, device: Any = "cpu") -> torch.dtype:
    """``rollout.dtype`` for sampling on ``device``: 'fp32', 'bf16', or 'auto': bf16 where the
    device computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX: ~1.4-2.7x faster
    than fp32), fp32 elsewhere (on an AVX2-only CPU bf16 is emulated: ~4x slower than fp32)."""
    if name == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    return torch.float32 if name == "fp32" else torch.bfloat16


def make_policy(model: torch.nn.Module, tokenizer: Any, cfg: RolloutConfig,
                system_prompt: str | None = None, model_path: str | None = None,
                fast: bool = True) -> Policy:
    """Wrap an fp32 model; sampling uses a copy in the generation dtype (:func:`generation_dtype`).

    Other backends (``cfg.backend``, e.g. vllm) sample from ``model_path``, the folder ``model``
    was loaded from; without it (a live model whose weights are not on disk) sampling falls back
    to hf. Behaviour log-probs always come from ``model`` (see ``rows_for_chunk``).
    ``fast=False`` samples with transformers ``generate`` (the round-1 path, see ``HFSampler``).
    """
    if cfg.backend != "hf" and model_path is not None:
        sampler = make_sampler(cfg.backend, model, tokenizer, cfg, model_path)
        return Policy(tokenizer, model, sampler, system_prompt)
    if cfg.backend != "hf":
        log.warning("rollout.backend=%s needs the model's folder; this in-memory model is "
                    "sampled with hf", cfg.backend)
    return Policy(tokenizer, model, hf_sampler(model, tokenizer, cfg, fast=fast), system_prompt)


@functools.cache
def _note_auto(dtype: str) -> None:
    """Say once per process what ``rollout.dtype=auto`` resolved to."""
    log.info("rollout.dtype=auto samples in %s on this machine%s", dtype.removeprefix("torch."),
             "" if dtype == "torch.bfloat16" else " (no native bf16 here: it would be emulated, slower)")


def hf_sampler(model: torch.nn.Module, tokenizer: Any, cfg: RolloutConfig, model_path: str | None = None,
               fast: bool = True) -> HFSampler:
    """``rollout.backend = "hf"``: cropi's decode loop on a copy of ``model`` in the generation
    dtype (:func:`generation_dtype`; fp32 samples from ``model`` itself); ``fast=False``:
    transformers ``generate``."""
    dtype = generation_dtype(cfg.dtype, next(model.parameters()).device)
    if cfg.dtype == "auto":
        _note_auto(str(dtype))
    gen_model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    return HFSampler(gen_model.eval(), tokenizer, fast=fast, max_rows=cfg.batch_size)


class Group(NamedTuple):
    """The responses of a chunk's prompts (:func:`sample_group`)."""

    responses: list[list[list[int]]]
    reasons: list[str]  # per prompt: all, stopped or extended
    logprobs: list[list[list[float]]] | None  # beta's, from the sampling (None: not given)
    embeddings: np.ndarray | None  # [prompts, hidden]: beta's mean last hidden state (None: not given)


def sampler_logprobs(policy: Policy, cfg: RolloutConfig) -> bool:
    """Whether beta's log-probs come from the sampling itself (``rollout.logprob_pass: auto``):
    cropi's decode loop samples from the fp32 model itself, so the logits each token is drawn from
    are the fp32 model's, the ones a teacher-forced pass would compute again."""
    sampler = policy.sampler
    return (cfg.logprob_pass == "auto" and getattr(sampler, "model", None) is policy.model
            and bool(getattr(sampler, "exact_logprobs", False)))


def _draw(policy: Policy, prompts: list[list[int]], params: SamplingParams, seed: int,
          scored: bool) -> Scored | tuple[list[list[list[int]]], None, None]:
    """One sampler call: responses, and with ``scored`` their log-probs and the prompts' embeddings."""
    if scored:
        return policy.sampler.generate_scored(prompts, params, seed)  # type: ignore[attr-defined]
    return policy.sampler.generate(prompts, params, seed), None, None


def sample_group(policy: Policy, prompts: list[list[int]], k: int, cfg: RolloutConfig, seed: int,
                 reward: Callable[[int, list[int]], float], scored: bool = False) -> Group:
    """Up to ``k`` responses per prompt; ``reward(i, response_ids)`` scores one of prompt i.

    With ``cfg.k_first`` below ``k`` (adaptive K), every prompt first gets ``k_first`` responses;
    only prompts whose rewards are mixed get ``k - k_first`` more (another seed): a prompt whose
    first rewards are all equal has no GRPO advantage yet, and more samples would rarely give it
    one. Returns the responses and, per prompt, why it has as many as it has: ``all`` (k at once),
    ``stopped`` (all equal after k_first) or ``extended`` (mixed after k_first: k in all); with
    ``scored`` (:func:`sampler_logprobs`) also each response's log-probs and each prompt's
    embedding (from its first prefill) from the sampling.
    """
    k0 = cfg.k_first if cfg.k_first is not None and cfg.k_first < k else k
    params = SamplingParams(n=k0, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens)
    first_rs, first_lps, embeddings = _draw(policy, prompts, params, seed, scored)
    responses = [list(rs) for rs in first_rs]
    logprobs = [list(lp) for lp in first_lps] if first_lps is not None else None
    if k0 == k:
        return Group(responses, ["all"] * len(prompts), logprobs, embeddings)
    rewards = [[reward(i, r) for r in rs] for i, rs in enumerate(responses)]
    mixed = [i for i, rw in enumerate(rewards) if min(rw) != max(rw)]
    if mixed:
        more_rs, more_lps, _ = _draw(policy, [prompts[i] for i in mixed], dataclasses.replace(params, n=k - k0),
                                     derive_seed(seed, "extend"), scored)  # embeddings: the first prefill's
        for j, (i, rs) in enumerate(zip(mixed, more_rs, strict=True)):
            responses[i].extend(rs)
            if logprobs is not None and more_lps is not None:
                logprobs[i].extend(more_lps[j])
    open_ = set(mixed)
    return Group(responses, ["extended" if i in open_ else "stopped" for i in range(len(prompts))], logprobs,
                 embeddings)


def rows_for_chunk(policy: Policy, records: Sequence[PromptRecord], k: int, cfg: RolloutConfig,
                   seed: int) -> tuple[list[dict[str, Any]], Work]:
    """The store rows of one chunk of prompts (responses, rewards, beta's fp32 log-probs: from
    the sampling where :func:`sampler_logprobs`, else a teacher-forced pass) and the work it took."""
    prompts = [policy.prompt_ids(r) for r in records]
    verdicts: dict[tuple[int, tuple[int, ...]], float] = {}

    def reward(i: int, response: list[int]) -> float:
        key = (i, tuple(response))
        if key not in verdicts:
            verdicts[key] = verify(policy.tokenizer.decode(response, skip_special_tokens=True), records[i]).reward
        return verdicts[key]

    from_sampling = sampler_logprobs(policy, cfg)
    responses, reasons, sampled_lps, embeddings = sample_group(policy, prompts, k, cfg, seed, reward,
                                                               scored=from_sampling)
    rewards = [[reward(i, r) for r in rs] for i, rs in enumerate(responses)]
    # beta's log-probs where a stage can use them: a prompt whose rewards are all equal has no
    # gradient at any stage (rollout.logprobs=all keeps them anyway, for the analysis' NLL)
    scored = [i for i, rw in enumerate(rewards) if cfg.logprobs == "all" or min(rw) != max(rw)]
    fast = getattr(policy.sampler, "fast", True)  # round 1 (HFSampler(fast=False)): the packed pass
    logprobs: dict[int, list[list[float]]] = {}
    if sampled_lps is not None:  # the sampling's own fp32 log-probs: no teacher-forced pass
        logprobs = {i: sampled_lps[i] for i in scored}
    else:
        flat = response_logprobs(policy.model, [prompts[i] for i in scored for _ in responses[i]],
                                 [r for i in scored for r in responses[i]], policy.pad_id, share_prompts=fast)
        for i in scored:
            logprobs[i], flat = flat[:len(responses[i])], flat[len(responses[i]):]
    rows = []
    work = Work(prompts=len(records), responses=sum(len(rs) for rs in responses))
    for i, (rec, p, rs) in enumerate(zip(records, prompts, responses, strict=True)):
        texts = [policy.tokenizer.decode(r, skip_special_tokens=True) for r in rs]
        lps = logprobs.get(i, [[] for _ in rs])
        n_tok = sum(len(r) for r in rs)
        rounds = 2 if reasons[i] == "extended" else 1
        work.tokens_generated += n_tok
        work.tokens_prefill += rounds * len(p)
        if i in logprobs and sampled_lps is None:
            work.tokens_forward += n_tok + (len(p) if fast else len(p) * len(rs))
        rows.append({
            "id": rec.id, "source": rec.source, "level": rec.level, "prompt_ids": p,
            "response_ids": rs, "response_text": texts, "rewards": rewards[i], "logprobs": lps,
            "pass_rate": float(sum(rewards[i]) / len(rs)), "n_tokens": n_tok, "sampling": reasons[i],
            "embedding": embeddings[i].tolist() if embeddings is not None else None,
        })
    return rows, work


def collect(records: Sequence[PromptRecord], folder: str | Path, policy: Callable[[], Policy],
            k: int, cfg: RolloutConfig, spec: dict[str, Any], name: str = "pool",
            overwrite: bool = False) -> Work:
    """Sample ``k`` responses for every record into ``folder`` (resumable; ``cfg.k_first``:
    adaptive K, :func:`sample_group`).

    ``policy`` is called only when there is work to do (a complete folder loads no model).
    Returns the work of this call (prompts sampled, tokens generated and forwarded; all zero when
    everything was already done).
    """
    folder = Path(folder)
    # rollout.logprobs and logprob_pass are left out: they decide which stored prompts carry beta's
    # log-probs and which pass computes them, not what is sampled (earlier stores stay valid)
    full_spec = {**spec, "k": k, "rollout": {k_: v for k_, v in vars(cfg).items()
                                             if k_ not in ("logprobs", "logprob_pass")},
                 "set": name}
    if store.is_complete(folder) and not overwrite:
        store.prepare_dir(folder, full_spec)  # raises when the spec changed
        log.info("%s: rollouts already complete in %s", name, folder)
        return Work()
    if (folder / "spec.json").exists() and not overwrite:
        store.prepare_dir(folder, full_spec)  # only checks: a changed spec fails before any work
    # a chunk holds chunk_rows first-round rows (with adaptive K most prompts stop at k_first)
    per_chunk = max(1, cfg.chunk_rows // min(k, cfg.k_first or k))
    chunks = [list(records[i:i + per_chunk]) for i in range(0, len(records), per_chunk)]
    todo = [c for c in range(len(chunks)) if overwrite or not store.part_path(folder, c).exists()]
    if todo:  # too-long prompts fail here, before the folder is written or anything generated
        policy().check_fit([r for c in todo for r in chunks[c]], cfg.max_new_tokens,
                           "rollout.max_new_tokens", where=name)
    store.prepare_dir(folder, full_spec, overwrite=overwrite)
    done = [c for c in range(len(chunks)) if store.part_path(folder, c).exists()]
    if done:
        log.info("%s: resuming, %d of %d chunks already sampled", name, len(done), len(chunks))
    work = Work()
    with track(f"rollout {name}", total=len(records), completed=sum(len(chunks[c]) for c in done)) as bar:
        for c, chunk in enumerate(chunks):
            if store.part_path(folder, c).exists():
                continue
            rows, chunk_work = rows_for_chunk(policy(), chunk, k, cfg, derive_seed(cfg.seed, name, c))
            store.write_part(folder, c, rows)
            bar.advance(len(chunk), chunk_work.tokens_generated)
            work.add(chunk_work)
    store.finalize(folder, len(chunks), {"spec": full_spec})
    return work
