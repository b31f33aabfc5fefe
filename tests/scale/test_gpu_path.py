"""The scoring path on CUDA gives the CPU's features (skipped without CUDA).

Count-sketch and sparse-jl projections of one vector on CPU vs CUDA are already checked in
tests/influence/test_projection.py::test_cpu_and_cuda_agree; this file adds the factorized
projector and whole POPI features (gradient + projection) of a tiny model.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence.params import select_params
from cropi.influence.pipeline import prompt_feature
from cropi.influence.projection import make_projector
from cropi.influence.projection.factorized import FactorizedProjector
from cropi.rollout.store import PromptRollouts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _items(n: int = 3) -> list[PromptRollouts]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        resp = [torch.randint(3, 97, (int(m),), generator=g).tolist()
                for m in torch.randint(3, 9, (4,), generator=g)]
        old = [np.full(len(r), -4.0, np.float32) for r in resp]
        out.append(PromptRollouts(f"p{i}", "s", None, torch.randint(3, 97, (6,), generator=g).tolist(),
                                  resp, [""] * 4, np.array([1, 0, 0, 1], np.float32), old))
    return out


def _projector(kind: str, model: torch.nn.Module, cfg: GradientConfig):
    params = select_params(model, cfg)
    pcfg = ProjectionConfig(kind=kind, k=256, seed=5)
    if kind == "factorized":
        return params, FactorizedProjector.from_model(model, pcfg,
                                                      params=list(zip(params.names, params.params)))
    return params, make_projector(pcfg, params.dim)


def test_factorized_projection_cpu_equals_cuda(small_lm) -> None:
    params, proj = _projector("factorized", small_lm, GradientConfig())
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(2, *p.shape, generator=gen) for p in params.params]
    cpu = proj.project_batch(grads)
    gpu = proj.project_batch([g.cuda() for g in grads])
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("kind", ["countsketch", "factorized"])
def test_popi_features_cpu_equal_cuda(small_lm, kind: str, concat: bool) -> None:
    """The CUDA features of either pass (responses concatenated under a 4D mask, or padded rows)
    equal the CPU's padded pass."""
    cfg = GradientConfig(autocast_bf16=False, concat_responses=False)
    gpu_cfg = GradientConfig(autocast_bf16=False, concat_responses=concat)
    gpu_model = copy.deepcopy(small_lm).cuda()
    p_cpu, proj_cpu = _projector(kind, small_lm, cfg)
    p_gpu, proj_gpu = _projector(kind, gpu_model, cfg)
    bf16 = GradientConfig(autocast_bf16=True, concat_responses=concat)
    for it in _items():
        a = prompt_feature(small_lm, p_cpu, proj_cpu, it, cfg, pad_id=0)
        b = prompt_feature(gpu_model, p_gpu, proj_gpu, it, gpu_cfg, pad_id=0)
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * float(np.abs(a).max()))
        c = prompt_feature(gpu_model, p_gpu, proj_gpu, it, bf16, pad_id=0)  # the GPU default
        assert float(a @ c / (np.linalg.norm(a) * np.linalg.norm(c))) > 0.99
