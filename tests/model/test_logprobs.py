"""Teacher-forced log-probs equal the scores seen at generation time; packing is layout-free."""

from __future__ import annotations

import torch

from cropi.model.loading import load_model, load_tokenizer
from cropi.model.logprobs import micro_batches, pack, response_logprobs
from cropi.model.template import prompt_token_ids
from cropi.rollout.sampler import HFSampler, SamplingParams, cut_at_eos


def test_teacher_forced_logprobs_match_generation_scores(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [prompt_token_ids(tok, [{"role": "user", "content": q}]) for q in ("What is 2+3?", "Hi")]
    width = max(map(len, prompts))
    ids = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, temperature=1.0,
                             max_new_tokens=12, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tok.pad_token_id)
    gen = out.sequences[:, width:]
    responses = [cut_at_eos(g.tolist(), {tok.eos_token_id}) for g in gen]
    ours = response_logprobs(model, prompts, responses, tok.pad_token_id)
    for b, resp in enumerate(responses):
        ref = [torch.log_softmax(out.logits[t][b].float(), -1)[tid].item() for t, tid in enumerate(resp)]
        assert max(abs(x - y) for x, y in zip(ref, ours[b])) < 1e-4


def test_logprobs_independent_of_batch_composition(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [prompt_token_ids(tok, [{"role": "user", "content": "q" * n}]) for n in (1, 5, 9)]
    responses = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    together = response_logprobs(model, prompts, responses, tok.pad_token_id, max_batch_tokens=10_000)
    alone = [response_logprobs(model, [p], [r], tok.pad_token_id)[0] for p, r in zip(prompts, responses)]
    for a, b in zip(together, alone):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_pack_layout_and_micro_batches():
    batch = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 5, 6, 0], [0, 0, 4, 7, 8, 9]]
    assert batch.position_ids.tolist()[1][2:] == [0, 1, 2, 3]
    assert batch.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert micro_batches([4, 4, 4, 10], 8) == [[0, 1], [2], [3]]
    assert micro_batches([3, 3, 3], 100) == [[0, 1, 2]]


def test_sampler_is_deterministic_per_seed(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    s = HFSampler(model, tok)
    prompts = [prompt_token_ids(tok, [{"role": "user", "content": "hello"}])]
    params = SamplingParams(n=3, max_new_tokens=6)
    assert s.generate(prompts, params, 7) == s.generate(prompts, params, 7)
    greedy = SamplingParams(n=2, max_new_tokens=6, greedy=True)
    a, b = s.generate(prompts, greedy, 1)[0]
    assert a == b


def test_concat_pays_for_short_uneven_responses_only():
    from types import SimpleNamespace

    from cropi.model.logprobs import concat_pays

    small = SimpleNamespace(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, vocab_size=49152)
    big = SimpleNamespace(hidden_size=1536, num_hidden_layers=28, intermediate_size=8960, vocab_size=151936)
    assert concat_pays(small, 60, [10, 30, 64, 20, 5, 40, 25, 33])  # RLVR answers on a 135M model
    assert not concat_pays(small, 60, [64] * 8)  # no padding to save: the masked attention costs more
    assert not concat_pays(big, 200, [512] * 8)  # 1.5B, K = 8 x 512 tokens
    assert concat_pays(big, 200, [512, 40, 30, 100, 60, 20, 80, 500])
