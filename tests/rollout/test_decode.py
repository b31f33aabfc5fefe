"""The fast decode loop and shared-prefix passes compute what the round-1 paths compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropi.model.loading import load_model, load_tokenizer
from cropi.model.logprobs import (
    concat_mask,
    pack,
    response_logprobs,
    shared_prefix_logprobs,
    token_logprobs,
)
from cropi.model.template import prompt_token_ids
from cropi.rollout.decode import decode
from cropi.rollout.sampler import HFSampler, SamplingParams


def _setup(tiny_model_dir):
    model = load_model(str(tiny_model_dir)).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [prompt_token_ids(tok, [{"role": "user", "content": q}])
               for q in ("What is 2+3?", "Hi", "Name three prime numbers below twenty.")]
    return model, tok, prompts


class _Tok:
    pad_token_id = 0
    eos_token_id = 1


def test_greedy_decode_equals_generate_with_early_stops(small_lm):
    prompts = [[2, 5, 9, 13], [2, 40], [2, 7, 7, 30, 31, 60, 61]]
    slow = HFSampler(small_lm, _Tok(), fast=False)
    first = slow.generate(prompts, SamplingParams(n=1, greedy=True, max_new_tokens=10), 0)
    eos = {first[0][0][0], 1}  # the first prompt's rows end at once, the others run to the limit
    assert first[1][0][0] not in eos
    slow.eos_ids = eos
    fast = HFSampler(small_lm, _Tok())
    fast.eos_ids = eos
    params = SamplingParams(n=2, greedy=True, max_new_tokens=10)
    ref, got = slow.generate(prompts, params, 0), fast.generate(prompts, params, 0)
    assert got == ref
    assert min(len(r) for rs in got for r in rs) == 1 and max(len(r) for rs in got for r in rs) == 10


def test_greedy_decode_with_a_shared_prefix_equals_generate(small_lm, tiny_model_dir):
    head = [2, 5, 9, 13, 17, 19, 23, 29, 31, 37]  # 10 tokens every prompt starts with
    prompts = [head + [40, 41, 42], head + [7], head + [50, 51, 52, 53, 54, 55]]
    params = SamplingParams(n=1, greedy=True, max_new_tokens=8)
    assert HFSampler(small_lm, _Tok()).generate(prompts, params, 0) == \
        HFSampler(small_lm, _Tok(), fast=False).generate(prompts, params, 0)
    model, tok, chat = _setup(tiny_model_dir)  # chat-templated: the system message is shared
    assert HFSampler(model, tok).generate(chat, params, 0) == HFSampler(model, tok, fast=False).generate(chat, params, 0)


def test_sampled_decode_is_seeded_and_follows_the_policy(tiny_model_dir):
    model, tok, prompts = _setup(tiny_model_dir)
    a = decode(model, prompts, 4, 8, {tok.eos_token_id}, tok.pad_token_id, seed=3)
    assert a == decode(model, prompts, 4, 8, {tok.eos_token_id}, tok.pad_token_id, seed=3)
    assert a != decode(model, prompts, 4, 8, {tok.eos_token_id}, tok.pad_token_id, seed=4)
    assert len(a) == 12 and len({tuple(r) for r in a[:4]}) > 1  # 4 different samples of prompt 0
    nucleus = decode(model, prompts, 2, 6, {tok.eos_token_id}, tok.pad_token_id, top_p=1e-6, seed=0)
    greedy = decode(model, prompts, 2, 6, {tok.eos_token_id}, tok.pad_token_id, greedy=True)
    assert nucleus == greedy  # top_p -> 0 keeps the argmax only


@pytest.mark.parametrize("concat", [True, False])
def test_shared_prefix_logprobs_equal_packed_pass(tiny_model_dir, concat):
    model, tok, prompts = _setup(tiny_model_dir)
    responses = [[5, 6, 7], [8], [9, 10, 11, 12, 13], []]
    p = prompts[2]
    with torch.no_grad():
        ref = token_logprobs(model, pack([p] * 4, responses, tok.pad_token_id))
        got = shared_prefix_logprobs(model, p, responses, tok.pad_token_id, concat)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    flat_p = [q for q in prompts for _ in range(2)]
    flat_r = [[5, 6], [7], [8, 9, 10], [11], [12], [13, 14]]
    shared = response_logprobs(model, flat_p, flat_r, tok.pad_token_id, share_prompts=True, concat=concat,
                               max_batch_tokens=3)  # several micro-batches per prompt
    packed = response_logprobs(model, flat_p, flat_r, tok.pad_token_id)
    for a, b in zip(shared, packed, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)


def test_concat_mask_sees_the_prefix_and_its_own_block():
    m = concat_mask(2, [2, 1, 3])[0, 0]
    assert m.shape == (6, 8) and m[:, :2].all()
    own = m[:, 2:].int().tolist()
    assert own == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                   [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]


def test_continuous_batching_equals_one_batch(small_lm, tiny_model_dir):
    """Rows joining a running batch (max_rows) decode as they would alone: greedy tokens equal."""
    prompts = [[2, 5, 9, 13], [2, 40], [2, 7, 7, 30, 31, 60, 61], [2, 8], [2, 11, 12, 13, 14, 15]]
    ref = HFSampler(small_lm, _Tok(), fast=False).generate(prompts, SamplingParams(n=1, greedy=True,
                                                                                   max_new_tokens=9), 0)
    eos = {ref[0][0][0], ref[3][0][0], 1}  # prompts 0 and 3 end at once, the others run to the limit
    for max_rows in (2, 3, 4):
        fast = HFSampler(small_lm, _Tok(), max_rows=max_rows)
        slow = HFSampler(small_lm, _Tok(), fast=False)
        fast.eos_ids = slow.eos_ids = eos
        params = SamplingParams(n=1, greedy=True, max_new_tokens=9)
        assert fast.generate(prompts, params, 0) == slow.generate(prompts, params, 0), max_rows
    model, tok, chat = _setup(tiny_model_dir)
    a = decode(model, chat, 2, 6, {tok.eos_token_id}, tok.pad_token_id, greedy=True, max_rows=2)
    assert a == decode(model, chat, 2, 6, {tok.eos_token_id}, tok.pad_token_id, greedy=True)


@pytest.mark.parametrize("native", [True, False])
def test_auto_generation_dtype_is_bf16_only_where_native(tiny_model_dir, monkeypatch, native):
    from cropi.config import RolloutConfig
    from cropi.rollout import collect

    monkeypatch.setattr(collect, "bf16_is_fast", lambda device: native)
    auto = torch.bfloat16 if native else torch.float32
    assert collect.generation_dtype("auto", "cpu") == auto
    assert collect.generation_dtype("bf16", "cpu") == torch.bfloat16  # explicit names are kept
    assert collect.generation_dtype("fp32", "cpu") == torch.float32
    model, tok, _ = _setup(tiny_model_dir)
    sampler = collect.hf_sampler(model, tok, RolloutConfig(dtype="auto"))
    assert next(sampler.model.parameters()).dtype == auto
    assert (sampler.model is model) == (auto == torch.float32)  # fp32 samples from the model itself


def _spy_moves(monkeypatch):
    """Record the decode slots' column shifts (start, offset, length before) and row gathers."""
    from cropi.rollout import decode as decode_mod

    shifts: list[tuple[int, int, int]] = []
    gathers: list[int] = []
    shift, gather = decode_mod._Slots._shift, decode_mod._Slots.gather_live

    def spy_shift(self, start, offset):
        shifts.append((start, offset, self.length))
        return shift(self, start, offset)

    def spy_gather(self):
        gathers.append(self.rows)
        return gather(self)

    monkeypatch.setattr(decode_mod._Slots, "_shift", spy_shift)
    monkeypatch.setattr(decode_mod._Slots, "gather_live", spy_gather)
    return shifts, gathers


def test_slots_shift_grow_and_gather_keep_greedy_tokens(small_lm, monkeypatch):
    """Many short calls' worth of prompts through 3 slots: the columns fill up and are shifted
    left past what no live row uses, and the tail gathers the live rows; tokens equal generate's."""
    prompts = [[2, 5 + i, 9, 13 + 2 * i] for i in range(12)] + [[2, 40], [2, 7, 7, 30, 31, 60, 61]]
    params = SamplingParams(n=1, greedy=True, max_new_tokens=9)
    slow = HFSampler(small_lm, _Tok(), fast=False)
    ref = slow.generate(prompts, params, 0)

    def ends(t: int) -> set[int]:  # where the rows would end with EOS t
        return {r[0].index(t) if t in r[0] else 9 for r in ref}

    eos = {max(range(3, 97), key=lambda t: len(ends(t))), 1}  # rows end at many different steps
    slow.eos_ids = eos
    ref = slow.generate(prompts, params, 0)
    shifts, gathers = _spy_moves(monkeypatch)
    fast = HFSampler(small_lm, _Tok(), max_rows=3)
    fast.eos_ids = eos
    assert fast.generate(prompts, params, 0) == ref
    assert any(offset < start for start, offset, _ in shifts)  # columns shifted left
    assert gathers  # live rows gathered at the tail
    assert len({len(r[0]) for r in ref}) > 1  # rows ended at different steps


def test_a_prompt_longer_than_the_cache_shifts_the_columns_right(small_lm, monkeypatch):
    short, long_ = [2, 40], [2, 7, 7, 30, 31, 60, 61, 62, 63, 64, 65, 66, 67, 68]
    params = SamplingParams(n=2, greedy=True, max_new_tokens=6)
    slow = HFSampler(small_lm, _Tok(), fast=False)
    eos = {slow.generate([short], params, 0)[0][0][0], 1}  # the short prompt's rows end at once
    slow.eos_ids = eos
    shifts, _ = _spy_moves(monkeypatch)
    fast = HFSampler(small_lm, _Tok(), max_rows=2)
    fast.eos_ids = eos
    assert fast.generate([short, long_], params, 0) == slow.generate([short, long_], params, 0)
    assert any(offset > start and length > 0 for start, offset, length in shifts)  # a non-empty cache moved right


def test_models_the_slots_do_not_handle_sample_with_generate(tiny_model_dir):
    from transformers import MistralConfig, MistralForCausalLM

    from cropi.rollout.decode import decodes_in_slots

    model, tok, _ = _setup(tiny_model_dir)
    assert decodes_in_slots(model)
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    sliding = MistralForCausalLM(cfg).eval()
    assert not decodes_in_slots(sliding)
    sampler = HFSampler(sliding, _Tok())
    assert sampler.fast and not sampler.slots
    params = SamplingParams(n=1, greedy=True, max_new_tokens=8)
    prompts = [[2, 5, 9, 13, 17, 19], [2, 40]]
    assert sampler.generate(prompts, params, 0) == HFSampler(sliding, _Tok(), fast=False).generate(prompts, params, 0)


@pytest.mark.parametrize(("start", "offset"), [(3, 0), (9, 2), (0, 5), (2, 3), (0, 11)])
def test_slot_shifts_move_columns_like_a_copy(small_lm, start, offset):
    """In-place block moves of the KV columns equal a naive copy, left and right, for shifts
    narrower and wider than what is moved."""
    from cropi.rollout.decode import _Prefix, _Slots

    slots = _Slots(small_lm, _Prefix([], 0.0), capacity_rows=4, columns=24)
    slots.admit([[2, 5, 9], [2, 7]], 1, [0, 1], pad_id=0)
    slots.length, slots.rows = 12, 2
    torch.manual_seed(0)
    for t in slots._buffers():
        t.copy_(torch.randint(1, 9, t.shape) if t.dtype == torch.long else torch.randn(t.shape))
    before = [t.clone() for t in slots._buffers()]
    slots._shift(start, offset)
    width = 12 - start
    assert slots.length == offset + width
    for old, new in zip(before, slots._buffers(), strict=True):
        cols_old = old if old.dim() == 2 else old.transpose(1, 2)
        cols_new = new if new.dim() == 2 else new.transpose(1, 2)
        torch.testing.assert_close(cols_new[:2, offset:offset + width], cols_old[:2, start:12], rtol=0, atol=0)
        torch.testing.assert_close(new[2:], old[2:], rtol=0, atol=0)  # rows not in use untouched
    if offset > start:
        assert not slots.mask[:2, start:offset].any()  # vacated columns are masked


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampled_logprobs_equal_the_teacher_forced_pass(tiny_model_dir, dtype):
    """decode_scored's log-probs (temperature 1, from the logits each token was drawn from) are
    what a teacher-forced pass computes, and its prompt embeddings (from the prefill) the mean
    last hidden state of each prompt run alone; its tokens are decode's. Admission into freed
    slots (max_rows) and gathering the live rows do not change them."""
    from cropi.rollout.decode import decode_scored

    model, tok, prompts = _setup(tiny_model_dir)
    model = model.to(dtype)
    eos = {tok.eos_token_id}
    for max_rows in (None, 3):
        kw = dict(temperature=0.5, top_p=0.9, seed=5, max_rows=max_rows)
        toks, lps, emb = decode_scored(model, prompts, 3, 10, eos, tok.pad_token_id, **kw)
        assert toks == decode(model, prompts, 3, 10, eos, tok.pad_token_id, **kw)
        assert [len(x) for x in lps] == [len(t) for t in toks]
        rows = [p for p in prompts for _ in range(3)]
        if dtype == torch.float64:  # naive: each [prompt, response] alone, log-softmax in float64
            with torch.no_grad():
                ref = [torch.log_softmax(model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1:-1], -1)
                       .gather(1, torch.tensor(r)[:, None]).squeeze(1).tolist() for p, r in zip(rows, toks)]
        else:  # the teacher-forced pass rollouts ran before (log-softmax in float32)
            ref = response_logprobs(model, rows, toks, tok.pad_token_id)
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        for a, b in zip(lps, ref, strict=True):
            torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                       rtol=0, atol=tol)
        assert min(min(x) for x in lps) < -1.0  # sampled at T = 0.5, scored untempered: not the tempered law
        with torch.no_grad():
            alone = torch.stack([model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0]
                                 .mean(0) for p in prompts])
        assert emb.dtype == torch.promote_types(dtype, torch.float32) and emb.shape == alone.shape
        torch.testing.assert_close(emb, alone, rtol=0, atol=1e-10 if dtype == torch.float64 else 1e-5)


def test_rollouts_take_beta_logprobs_from_the_sampling_where_it_is_the_fp32_model(tiny_model_dir, monkeypatch):
    """rollout.logprob_pass: auto stores the decode loop's own fp32 log-probs (no forward pass
    counted) and prompt embeddings; always runs the teacher-forced pass and keeps no embedding;
    both store the same responses and log-probs. A bf16 sampler (a copy of the model) always gets
    the teacher-forced pass."""
    from cropi.config import RolloutConfig
    from cropi.data.schema import PromptRecord
    from cropi.influence import embeddings as emb_mod
    from cropi.rollout.collect import make_policy, rows_for_chunk, sampler_logprobs

    model, tok, _ = _setup(tiny_model_dir)
    records = [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": f"What is {i} + 2?"}],
                            answer=str(i + 2), source="t") for i in range(3)]
    got = {}
    for mode in ("auto", "always"):
        cfg = RolloutConfig(dtype="fp32", max_new_tokens=8, logprobs="all", logprob_pass=mode, k_first=2)
        policy = make_policy(model, tok, cfg)
        assert sampler_logprobs(policy, cfg) == (mode == "auto")
        got[mode] = rows_for_chunk(policy, records, 4, cfg, seed=3)
    (auto, w_auto), (always, w_always) = got["auto"], got["always"]
    assert w_auto.tokens_forward == 0 < w_always.tokens_forward
    assert w_auto.tokens_generated == w_always.tokens_generated
    for a, b in zip(auto, always, strict=True):
        assert a["response_ids"] == b["response_ids"] and a["sampling"] == b["sampling"]
        for x, y in zip(a["logprobs"], b["logprobs"], strict=True):
            assert len(x) == len(y) > 0
            torch.testing.assert_close(torch.tensor(x), torch.tensor(y), rtol=0, atol=2e-5)
        assert b["embedding"] is None
    monkeypatch.setattr(emb_mod, "bf16_is_fast", lambda device: False)  # the fp32 forward pass
    ref = emb_mod.hidden_state_embeddings(model, [policy.prompt_ids(r) for r in records], tok.pad_token_id)
    np.testing.assert_allclose(np.array([row["embedding"] for row in auto]), ref, rtol=0, atol=1e-5)
    bf16 = RolloutConfig(dtype="bf16", max_new_tokens=8)
    assert not sampler_logprobs(make_policy(model, tok, bf16), bf16)
