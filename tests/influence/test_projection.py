"""Projectors: float64 dense references, split/batch invariance, determinism, JL properties."""

from __future__ import annotations

import math

import pytest
import torch

from cropi.config import ProjectionConfig
from cropi.influence import projection
from cropi.influence.projection import jl as projection_jl
from cropi.influence.projection import (CountSketchProjector, IdentityProjector, Projector,
                                        dense_matrix, make_projector)
from cropi.utils.errors import CropiError

D = 3500  # four chunks of 1000 (the last one short) with the test CHUNK
K = 64
KINDS = [  # (kind, distribution, sparse_ratio)
    ("countsketch", "rademacher", 1.0),
    ("sparse-jl", "rademacher", 1.0),
    ("sparse-jl", "gaussian", 1.0),
    ("sparse-jl", "rademacher", 0.3),
    ("sparse-jl", "gaussian", 0.3),
]
IDS = [f"{k}-{dist}-r{r}" for k, dist, r in KINDS]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 1000 coordinates and JL sub-blocks of 300 columns (k=64), so that a few
    thousand coordinates cross several chunks and sub-blocks."""
    monkeypatch.setattr(projection, "CHUNK", 1000)
    monkeypatch.setattr(projection_jl, "JL_BLOCK_ELEMS", 300 * K)


def _make(kind: str, dist: str = "rademacher", r: float = 1.0, *, k: int = K, d: int = D,
          seed: int = 7, **kw: int) -> Projector:
    cfg = ProjectionConfig(kind=kind, k=k, distribution=dist, sparse_ratio=r, seed=seed)
    return make_projector(cfg, d, **kw)


def _vec(d: int, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, d, generator=gen, dtype=torch.float64)


def _split(g: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
    """Split the last dim at ``cuts`` into uneven tensors; some become 2-D / 3-D (row-major)."""
    bounds = [0, *cuts, g.shape[-1]]
    parts = [g[..., a:b] for a, b in zip(bounds, bounds[1:])]
    out = []
    for p in parts:
        n = p.shape[-1]
        if n % 6 == 0 and n:
            p = p.reshape(*p.shape[:-1], 2, 3, n // 6)
        elif n % 2 == 0 and n:
            p = p.reshape(*p.shape[:-1], n // 2, 2)
        out.append(p)
    return out


SPLIT_A = [7, 7, 1994, 2000, 3100]       # an empty tensor, a tensor ending on a chunk boundary
SPLIT_B = [1, 999, 1001, 2500, 2502, 3499]


@pytest.mark.parametrize(("kind", "dist", "r"), KINDS, ids=IDS)
def test_project_matches_dense_float64_reference(kind: str, dist: str, r: float) -> None:
    proj = _make(kind, dist, r)
    g = _vec(D, 0)
    got = proj.project([p.float() for p in _split(g, SPLIT_A)])
    ref = dense_matrix(proj) @ g
    assert got.dtype == torch.float32 and got.shape == (K,)
    assert (got.double() - ref).norm() / ref.norm() < 1e-5


def test_dense_structure_countsketch_and_mask() -> None:
    m = dense_matrix(_make("countsketch"))
    assert ((m != 0).sum(0) == 1).all() and set(m[m != 0].tolist()) == {-1.0, 1.0}
    jl = dense_matrix(_make("sparse-jl", "rademacher", 0.3))
    kept = (jl != 0).any(0).double().mean()
    assert abs(kept - 0.3) < 0.05
    assert torch.allclose(jl[jl != 0].abs(), torch.full((1,), 1 / math.sqrt(K), dtype=torch.float64))


@pytest.mark.parametrize(("kind", "dist", "r"), KINDS, ids=IDS)
def test_split_invariance(kind: str, dist: str, r: float) -> None:
    proj = _make(kind, dist, r)
    g = _vec(D, 1).float()
    a = proj.project(_split(g, SPLIT_A))
    b = proj.project(_split(g, SPLIT_B))
    c = proj.project([g])
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5) and torch.allclose(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "dist", "r"), KINDS, ids=IDS)
def test_project_batch_rows_equal_project(kind: str, dist: str, r: float) -> None:
    proj = _make(kind, dist, r)
    g = _vec(D, 2, (3,)).float()
    batch = proj.project_batch(_split(g, SPLIT_B))
    assert batch.shape == (3, K) and batch.dtype == torch.float32
    for i in range(3):
        assert torch.allclose(batch[i], proj.project(_split(g[i], SPLIT_A)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "dist", "r"), KINDS, ids=IDS)
def test_determinism_from_seed(kind: str, dist: str, r: float) -> None:
    g = [p.float() for p in _split(_vec(D, 3), SPLIT_A)]
    a, b = _make(kind, dist, r, seed=11), _make(kind, dist, r, seed=11, cache_bytes=0)
    assert torch.equal(a.project(g), b.project(g))
    assert torch.equal(a.project(g), a.project(g))  # cached tables give the same answer
    assert not torch.allclose(a.project(g), _make(kind, dist, r, seed=12).project(g))
    assert a.spec() == b.spec() and a.spec()["seed"] == 11 and a.spec()["chunk"] == 1000


def test_tables_depend_only_on_seed_kind_and_chunk_index() -> None:
    """Chunk c's columns are the same whatever d is (so they are derived per chunk)."""
    for kind in ("countsketch", "sparse-jl"):
        small = dense_matrix(_make(kind, "gaussian", 0.5, d=2000))
        large = dense_matrix(_make(kind, "gaussian", 0.5, d=D))
        assert torch.equal(small, large[:, :2000])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("kind", "dist", "r"), KINDS[:2] + KINDS[-1:], ids=IDS[:2] + IDS[-1:])
def test_low_precision_inputs_accumulate_in_fp32(kind: str, dist: str, r: float,
                                                 dtype: torch.dtype) -> None:
    proj = _make(kind, dist, r)
    g = [p.to(dtype) for p in _split(_vec(D, 4) * 50, SPLIT_A)]
    got = proj.project(g)
    ref = proj.project([p.float() for p in g])
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-5)
    exact = dense_matrix(proj) @ torch.cat([p.double().reshape(-1) for p in g])
    assert (got.double() - exact).norm() / exact.norm() < 1e-5  # fp32, not bf16/fp16, accumulation


def test_identity_projector() -> None:
    g = _vec(D, 5)
    proj = _make("none")
    assert isinstance(proj, IdentityProjector) and proj.k == proj.d == D
    assert torch.equal(proj.project(_split(g, SPLIT_A)), g.float())
    rows = _vec(D, 6, (2,))
    assert torch.equal(proj.project_batch(_split(rows, SPLIT_B)), rows.float())
    with pytest.raises(CropiError, match="countsketch"):
        _make("none", d=2**24 + 1)


def test_errors_for_wrong_d_and_factorized_kind() -> None:
    proj = _make("countsketch")
    with pytest.raises(CropiError, match="d=3500"):
        proj.project([torch.zeros(D - 1)])
    with pytest.raises(CropiError, match="from_model"):
        _make("factorized")
    with pytest.raises(CropiError, match="one B"):
        proj.project_batch([torch.zeros(2, 10), torch.zeros(3, D - 10)])


def test_spec_and_protocol() -> None:
    for kind, dist, r in KINDS:
        proj = _make(kind, dist, r)
        assert isinstance(proj, Projector)
        spec = proj.spec()
        assert {"kind", "k", "d", "seed", "sparse_ratio", "distribution", "chunk"} <= set(spec)
        assert (spec["kind"], spec["k"], spec["d"]) == (kind, K, D)
    assert _make("sparse-jl", "gaussian", 0.3).spec()["distribution"] == "gaussian"


def test_cache_budget_is_respected() -> None:
    proj = _make("countsketch", cache_bytes=2 * 1000 * 4)  # room for two chunks' codes (4 bytes each)
    proj.project([_vec(D, 7).float()])
    assert proj.cache.used == 2 * 1000 * 4


@pytest.mark.parametrize(("kind", "dist", "r"), KINDS, ids=IDS)
def test_inner_products_unbiased_over_seeds(kind: str, dist: str, r: float,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection_jl, "JL_BLOCK_ELEMS", 2**26)  # one sub-block per chunk
    d, n_seeds = 2000, 100
    g = _vec(d, 8)
    h = 0.5 * g + _vec(d, 9)
    est, norms = [], []
    for s in range(n_seeds):
        proj = _make(kind, dist, r, d=d, seed=s)
        pg, ph = proj.project_batch([torch.stack([g, h]).float()]).double()
        est.append(float(pg @ ph) / r)  # E over the mask of <Sg, Sh> is r <g, h>
        norms.append(float(pg @ pg) / r)
    est_t, norms_t = torch.tensor(est, dtype=torch.float64), torch.tensor(norms, dtype=torch.float64)
    se = est_t.std() / math.sqrt(n_seeds)
    assert abs(est_t.mean() - g @ h) < 4 * se
    assert abs(norms_t.mean() - g @ g) < 4 * norms_t.std() / math.sqrt(n_seeds)
    assert se < 0.1 * (g @ h)  # the test can tell a wrong scale apart


def _heavy_tailed_pair(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian x log-normal scale: the top 0.1 % of coordinates hold ~80 % of the energy."""
    gen = torch.Generator().manual_seed(0)

    def draw() -> torch.Tensor:
        z = torch.randn(d, generator=gen, dtype=torch.float64)
        return z * torch.exp(2.0 * torch.randn(d, generator=gen, dtype=torch.float64))

    g = draw()
    return g, 0.2 * g + draw()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize(("kind", "d", "k_small", "k_large"),
                         [("countsketch", 200_000, 256, 4096), ("sparse-jl", 10_000, 64, 1024)])
def test_cosine_error_shrinks_like_inverse_sqrt_k(kind: str, d: int, k_small: int, k_large: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection_jl, "JL_BLOCK_ELEMS", 2**26)  # one sub-block per chunk
    g, h = _heavy_tailed_pair(d)
    true = _cos(g, h)
    errs: dict[int, torch.Tensor] = {}
    for k in (k_small, k_large):
        e = []
        for seed in range(20):
            proj = _make(kind, k=k, d=d, seed=seed)
            pg, ph = proj.project_batch([torch.stack([g, h]).float()]).double()
            e.append(_cos(pg, ph) - true)
        errs[k] = torch.tensor(e)
    rms = {k: float(e.pow(2).mean().sqrt()) for k, e in errs.items()}
    assert rms[k_large] < rms[k_small] / 2  # 1/sqrt(k) predicts a factor 4 (measured 4-5)
    assert float(errs[k_large].abs().max()) < 4 / math.sqrt(k_large)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("kind", "dist", "r"), KINDS, ids=IDS)
def test_cpu_and_cuda_agree(kind: str, dist: str, r: float) -> None:
    proj = _make(kind, dist, r)
    g = _split(_vec(D, 10, (2,)).float(), SPLIT_A)
    cpu = proj.project_batch(g)
    gpu = proj.project_batch([p.cuda().to(torch.bfloat16) for p in g])
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    ref = proj.project_batch([p.to(torch.bfloat16) for p in g])
    assert torch.allclose(gpu.cpu(), ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(proj.project_batch([p.cuda() for p in g]).cpu(), cpu, rtol=1e-4,
                          atol=1e-4)


def test_countsketch_full_chunks_match_float64_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the real chunk size each bucket half sums ~256 values per chunk before the difference
    (k = 8192): the fp32 result stays within float rounding of a float64 signed bucket sum."""
    monkeypatch.setattr(projection, "CHUNK", 2**22)
    d, k = 2**22 + 3000, 8192
    proj = _make("countsketch", k=k, d=d)
    g = torch.randn(d, generator=torch.Generator().manual_seed(3)) * torch.rand(d) ** 4  # heavy-tailed
    ref = torch.zeros(k, dtype=torch.float64)
    for c in range(proj.n_chunks):
        bucket, sign = proj.bucket_sign(c)
        part = g[c * 2**22:c * 2**22 + proj.chunk_len(c)].double()
        ref.index_add_(0, bucket.long(), part * sign.double())
    got = proj.project([g[:1234567], g[1234567:].reshape(-1, 1)])
    assert (got.double() - ref).norm() / ref.norm() < 2e-6
    assert (got.double() - ref).abs().max() / ref.abs().max() < 2e-5
