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
