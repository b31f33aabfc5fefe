"""Beta's prompt embeddings (the selection analysis' similarity) against a naive per-prompt loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropi.influence import embeddings
from cropi.model.logprobs import common_prefix

HEAD = [2, 5, 9, 13, 17, 19, 23, 29, 31, 37]  # 10 tokens: a shared prefix that counts (>= 8)


def _naive(model: torch.nn.Module, prompts: list[list[int]]) -> np.ndarray:
    """Each prompt alone, the mean of its last hidden state over its tokens, in float64."""
    with torch.no_grad():
        return np.stack([model(input_ids=torch.as_tensor([p]), output_hidden_states=True).hidden_states[-1][0]
                         .mean(0).numpy() for p in prompts])


@pytest.mark.parametrize("head", [HEAD, []], ids=["shared-prefix", "no-prefix"])
@pytest.mark.parametrize("budget", [8192, 16], ids=["one-batch", "one-prompt-per-batch"])
def test_embeddings_equal_each_prompt_run_alone(small_lm, monkeypatch, head, budget):
    monkeypatch.setattr(embeddings, "bf16_is_fast", lambda device: False)  # float64 throughout
    model = small_lm.double()
    prompts = [head + [40, 41, 42], head + [7], head + [50, 51, 52, 53, 54, 55], [3, *head[1:], 60]]
    assert common_prefix(prompts[:3]) == len(head) and common_prefix(prompts) == 0
    for chosen in (prompts[:3], prompts, prompts[1:2]):  # with and without a prefix, and a single prompt
        got = embeddings.hidden_state_embeddings(model, chosen, pad_id=0, max_batch_tokens=budget)
        assert got.dtype == np.float32 and got.shape == (len(chosen), model.config.hidden_size)
        np.testing.assert_allclose(got, _naive(model, chosen), rtol=1e-6, atol=1e-6)


def test_a_sliding_window_model_runs_each_prompt_whole(monkeypatch):
    """A cache that does not keep every position (here a window shorter than the shared prefix)
    cannot be shared: the prompts run whole, and still equal each prompt run alone."""
    from transformers import MistralConfig, MistralForCausalLM

    from cropi.model.logprobs import caches_every_position

    monkeypatch.setattr(embeddings, "bf16_is_fast", lambda device: False)
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = MistralForCausalLM(cfg).eval().double()
    assert not caches_every_position(model)
    prompts = [HEAD + [40, 41, 42], HEAD + [7], HEAD + [50, 51, 52, 53]]
    got = embeddings.hidden_state_embeddings(model, prompts, pad_id=0)
    np.testing.assert_allclose(got, _naive(model, prompts), rtol=1e-6, atol=1e-6)
