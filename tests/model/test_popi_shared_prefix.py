"""POPI's shared-prefix pass (the default) gives round 1's packed-batch gradient."""

from __future__ import annotations

import numpy as np
import torch

from cropi.config import GradientConfig
from cropi.influence.popi import popi_backward
from cropi.rollout.store import PromptRollouts


def test_shared_prefix_gradient_equals_packed(tiny_model_dir):
    from cropi.model.loading import load_model, load_tokenizer

    model = load_model(str(tiny_model_dir))
    pad = int(load_tokenizer(str(tiny_model_dir)).pad_token_id)
    resp = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]]
    item = PromptRollouts(id="x", source="s", level=None, prompt_ids=[1, 2, 3, 4, 5], response_ids=resp,
                          response_text=[""] * 4, rewards=np.array([1.0, 0.0, 1.0, 0.0], np.float32),
                          logprobs=[np.full(len(r), -1.0, np.float32) for r in resp])
    grads = []
    for shared in (False, True):
        model.zero_grad(set_to_none=True)
        assert popi_backward(model, item, GradientConfig(clip_eps=0.2, autocast_bf16=False), pad, shared_prefix=shared)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)
