"""Several prompts per backward (``gradient.prompts_per_backward``): per-prompt projected gradients
from the factorized projector's hooks equal the one-prompt-per-backward path (``.grad``, then
``FactorizedProjector.project``) with the same projector, within floating-point tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence import projection
from cropi.influence.features import FeatureStore
from cropi.influence.params import select_params
from cropi.influence.pipeline import batch_features, compute_features, prompt_feature
from cropi.influence.popi import backward_batches, backward_tokens, fits_one_backward
from cropi.influence.projection.factorized import FactorizedProjector
from cropi.influence.projection.factorized_hooks import FactorizedHooks
from cropi.rollout.store import PromptRollouts
from cropi.utils.errors import CropiError

FP32 = GradientConfig(autocast_bf16=False)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "CHUNK", 1000)  # the tied embedding's sketch spans chunks


def _items() -> list[PromptRollouts]:
    """Prompts of 2..9 tokens, K = 3..5 responses of 1..8 tokens; p2 has equal rewards (no
    signal), p4 has one response of length 0."""
    g = torch.Generator().manual_seed(1)
    spec = [(7, 4), (3, 4), (5, 4), (9, 3), (2, 5), (4, 4)]
    out = []
    for i, (p_len, k) in enumerate(spec):
        lens = torch.randint(1, 9, (k,), generator=g).tolist()
        if i == 4:
            lens[1] = 0
        resp = [torch.randint(3, 97, (n,), generator=g).tolist() for n in lens]
        rewards = np.array([1.0] * k if i == 2 else [float(j % 2) for j in range(k)], np.float32)
        old = [(-2.0 - torch.rand(len(r), generator=g)).numpy().astype(np.float32) for r in resp]
        out.append(PromptRollouts(f"p{i}", "s", None, torch.randint(3, 97, (p_len,), generator=g).tolist(),
                                  resp, [""] * k, rewards, old))
    return out


def _setup(model: torch.nn.Module, k: int = 512):
    params = select_params(model, FP32)
    proj = FactorizedProjector.from_model(model, ProjectionConfig(kind="factorized", k=k, seed=4),
                                          params=list(zip(params.names, params.params)))
    return params, proj


def _one_prompt(model, params, proj, items, cfg=FP32) -> np.ndarray:
    return np.stack([prompt_feature(model, params, proj, it, cfg, pad_id=0) for it in items])


def _close(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    for x, y in zip(a, b):
        assert np.linalg.norm(x - y) <= tol * np.linalg.norm(y), (np.linalg.norm(x - y), np.linalg.norm(y))


def test_batched_equals_one_prompt_per_backward(small_lm) -> None:
    items = [it for it in _items() if not it.zero_grad]
    params, proj = _setup(small_lm)
    assert "model.embed_tokens.weight" in proj.rest_names  # tied lm_head/embedding: the remainder
    ref = _one_prompt(small_lm, params, proj, items)
    got = np.stack(batch_features(small_lm, params, proj, items, FP32, pad_id=0))
    _close(got, ref, 1e-5)
    # the linear blocks and the remainder (tied weight, norms) each match, not only their sum
    _close(got[:, :proj.k_lin], ref[:, :proj.k_lin], 1e-5)
    _close(got[:, proj.k_lin:], ref[:, proj.k_lin:], 1e-5)
    # no weight gradient was formed, and the flags came back
    assert all(p.grad is None for p in params.params) and all(p.requires_grad for p in params.params)
    one = batch_features(small_lm, params, proj, items[1:2], FP32, pad_id=0)[0]  # a batch of one
    _close(one[None], ref[1:2], 1e-5)


def test_batched_in_float64_matches_tightly(small_lm) -> None:
    model = small_lm.double()
    items = [it for it in _items() if not it.zero_grad]
    params, proj = _setup(model)
    ref = _one_prompt(model, params, proj, items)
    got = np.stack(batch_features(model, params, proj, items[::-1], FP32, pad_id=0))[::-1]
    _close(got, ref, 1e-6)  # fp32 accumulation of projections; order of the batch irrelevant


def test_compute_features_batched_with_a_zero_gradient_prompt(small_lm, tmp_path) -> None:
    items = _items()
    ids = [it.id for it in items]
    params, proj = _setup(small_lm)
    out = {}
    for n in (1, 4):
        cfg = GradientConfig(autocast_bf16=False, prompts_per_backward=n)
        store = FeatureStore.open(tmp_path / f"n{n}", ids, proj.k, "fp32", {"test": 1})
        tm = compute_features(small_lm, params, proj, items, store, cfg, pad_id=0)
        out[n] = (FeatureStore.load(tmp_path / f"n{n}").read(), tm)
    (_, one, zero1), t1 = out[1]
    (_, four, zero4), t4 = out[4]
    assert zero1.tolist() == zero4.tolist() == [False, False, True, False, False, False]
    assert not four[2].any()
    _close(np.delete(four, 2, 0), np.delete(one, 2, 0), 1e-5)
    assert t4.n_prompts == t1.n_prompts == 6 and t4.n_zero_grad == t1.n_zero_grad == 1
    assert t4.work.as_dict() == t1.work.as_dict()  # prompts, responses and tokens backpropagated
    assert t4.work.as_dict()["tokens_backward"] == sum(backward_tokens(it, FP32) for it in items) > 0


def test_batched_under_bf16_autocast_is_close(small_lm) -> None:
    items = [it for it in _items() if not it.zero_grad][:3]
    params, proj = _setup(small_lm)
    cfg = GradientConfig(autocast_bf16=True)
    ref = _one_prompt(small_lm, params, proj, items, cfg)
    got = np.stack(batch_features(small_lm, params, proj, items, cfg, pad_id=0))
    for x, y in zip(got, ref):
        assert float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) > 0.999


def test_grouping_respects_budget_and_count() -> None:
    items = [it for it in _items() if not it.zero_grad]
    cfg = GradientConfig(max_batch_tokens=40)
    groups = backward_batches(items, cfg, 3)
    assert [i for g in groups for i in g] == list(range(len(items)))
    for g in groups:
        assert len(g) <= 3
        if len(g) > 1 or fits_one_backward(items[g[0]], cfg):
            rows = sum(len(items[i].response_ids) for i in g)
            longest = max(1 + len(r) for i in g for r in items[i].response_ids)
            assert rows * longest <= 40
    big = GradientConfig(max_batch_tokens=16)  # 4 rows x 9 tokens > 16: scored alone, one-prompt path
    assert not fits_one_backward(items[0], big) and [0] in backward_batches(items, big, 4)


def test_prompts_per_backward_config_and_fallback(small_lm, tmp_path, caplog) -> None:
    with pytest.raises(CropiError):
        GradientConfig(prompts_per_backward=0)
    items = _items()[:2]
    ids = [it.id for it in items]
    params = select_params(small_lm, FP32)
    cs = projection.make_projector(ProjectionConfig(k=32, seed=3), params.dim)
    store = FeatureStore.open(tmp_path / "cs", ids, 32, "fp32", {"test": 1})
    with caplog.at_level("WARNING"):
        compute_features(small_lm, params, cs, items, store, GradientConfig(autocast_bf16=False,
                                                                            prompts_per_backward=4), 0)
    assert "one prompt per backward" in caplog.text
    ref = np.stack([prompt_feature(small_lm, params, cs, it, FP32, 0) for it in items])
    np.testing.assert_allclose(FeatureStore.load(tmp_path / "cs").read()[1], ref, rtol=1e-5, atol=1e-7)


def test_hooks_refuse_an_unsupported_remainder_parameter() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.mat = torch.nn.Parameter(torch.ones(2, 2))

        def forward(self, x):
            return self.fc(x) * self.mat.sum()

    model = Odd()
    proj = FactorizedProjector.from_model(model, ProjectionConfig(kind="factorized", k=64, seed=0))
    with pytest.raises(CropiError, match="per-example projection cannot handle"):
        FactorizedHooks(model, proj, torch.zeros(1, dtype=torch.long), 1, per_example_rest=True)
