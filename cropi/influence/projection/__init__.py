"""Random projections of gradients: ``g~ = P g`` with ``P`` a seeded ``k x d`` map never stored.

A gradient is a sequence of parameter-gradient tensors in a fixed order; their flattened
concatenation (never built) is a vector ``g`` of dimension ``d`` (up to 1.5e9). Its global
coordinate index is cut into chunks of ``CHUNK = 2**22`` coordinates; chunk ``c``'s random tables
come from a CPU ``torch.Generator`` seeded with ``derive_seed(seed, kind, c, ...)`` and are moved
to the input's device (and cached there up to ``cache_bytes``). Hence a projection is the same on
CPU and CUDA, and the same however ``g`` is split into tensors. Each chunk is cast to fp32 on its
device and accumulated into a fp32 ``[k]`` (or ``[B, k]``) result, whatever the input dtype.

Projectors (``ProjectionConfig.kind``):

- ``countsketch``: a sparse JL map with one nonzero per column: coordinate ``i`` goes to bucket
  ``h(i)`` in ``[0, k)`` with sign ``s(i) = +-1``: ``(Pg)_j = sum_{h(i)=j} s(i) g_i``. Since
  ``E[s(i) s(i')] = [i = i']``, ``E[<Pg, Ph>] = <g, h>`` with no scaling; the variance of the
  inner product is ``(sum_{i!=i'} g_i^2 h_{i'}^2 + g_i h_i g_{i'} h_{i'}) / k``, so cosine errors
  shrink like ``1/sqrt(k)``. Both tables come from one ``randint(0, 2k)`` per coordinate
  (bucket = r >> 1, sign = r & 1), and the projection adds each value at ``r`` in a ``2k`` buffer
  whose odd entries are subtracted from the even ones; 4 bytes per coordinate when cached (0.54 GB
  for d = 134.5e6).
- ``sparse-jl``: the paper's ``P S g`` (Bernoulli keep mask, then a dense Rademacher or Gaussian
  map), see :mod:`cropi.influence.projection.jl` for its (large) cost.
- ``none``: identity, ``k = d``; only for ``d <= 2**24`` (e.g. LoRA gradients).
- ``factorized``: LoGra-style ``P_out G P_in^T`` per ``nn.Linear``; it needs the model, so it is
  built with :meth:`FactorizedProjector.from_model` (``cropi.influence.projection.factorized``),
  not with :func:`make_projector`.

Tests replace ``CHUNK`` in this module (``monkeypatch.setattr(projection, "CHUNK", 1000)``):
:func:`make_projector` reads it when it builds a projector, and ``spec()["chunk"]`` records it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from cropi.config import ProjectionConfig
from cropi.influence.projection.core import CHUNK, ChunkedProjector, Pieces, _numel_per_row
from cropi.influence.projection.jl import SparseJLProjector
from cropi.influence.registries import PROJECTORS
from cropi.utils.errors import CropiError

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "CountSketchProjector", "IdentityProjector", "Projector", "SparseJLProjector",
           "dense_matrix", "make_projector", "register_projector"]

IDENTITY_MAX_D: int = 2**24
DENSE_MAX_ENTRIES: int = 2**28


@runtime_checkable
class Projector(Protocol):
    """Compresses a gradient (a sequence of tensors, d coordinates in all) to ``[k]`` float32."""

    kind: str
    k: int
    d: int

    def spec(self) -> dict[str, Any]:
        """kind, k, d, seed, sparse_ratio, distribution, chunk (+ layout): goes into manifests."""
        ...

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tensors ``[*shape_i]`` (sum of numel = d) -> ``[k]`` float32 on their device."""
        ...

    def project_batch(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tensors ``[B, *shape_i]`` -> ``[B, k]`` float32; row b equals ``project`` of row b."""
        ...


class CountSketchProjector(ChunkedProjector):
    """Count-sketch (SJLT, one +-1 per column) regenerated per chunk; see the module docstring."""

    kind = "countsketch"

    def _codes(self, c: int) -> torch.Tensor:
        return torch.randint(0, 2 * self.k, (self.chunk_len(c),), generator=self.generator(c),
                             dtype=torch.int64 if self.k >= 2**30 else torch.int32)

    def codes(self, c: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Chunk c's codes ``r [n]`` in ``[0, 2k)`` on ``device`` (cached): coordinate ``i`` goes to
        bucket ``r_i >> 1`` with sign + for even ``r_i``, - for odd."""
        (codes,) = self.cache.get(("countsketch", c), torch.device(device), lambda: (self._codes(c),))
        return codes

    def bucket_sign(self, c: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk c's ``bucket [n]`` in ``[0, k)`` and ``sign [n] float32`` in {-1, +1}."""
        r = self.codes(c, device)
        return r >> 1, (r & 1).float().mul_(-2.0).add_(1.0)

    def _apply(self, c: int, pieces: Pieces, out: torch.Tensor) -> None:
        # Each value is added at its code r in a [B, 2k] buffer (positive signs at even r, negative
        # at odd), and the chunk's buckets are the differences of the two halves: no sign table is
        # read and no signed copy of the gradient is made (1.2x on one CPU thread, where the
        # scatter-add itself dominates: benchmarks/countsketch_speed.py). The buffer is per chunk,
        # so each half sums about chunk / 2k values before the difference.
        codes = self.codes(c, out.device)
        signed = out.new_zeros(out.shape[0], 2 * self.k)
        for off, x in pieces:
            r = codes[off:off + x.shape[1]]
            for row in range(x.shape[0]):  # 1-D index_add_ is ~10x faster than along dim 1
                signed[row].index_add_(0, r, x[row].float())
        out += signed[:, 0::2] - signed[:, 1::2]

    def _dense_chunk(self, c: int) -> torch.Tensor:
        bucket, sign = self.bucket_sign(c)
        cols = torch.zeros(self.k, bucket.numel(), dtype=torch.float64)
        cols[bucket.long(), torch.arange(bucket.numel())] = sign.double()
        return cols


class IdentityProjector:
    """``kind = "none"``: the flattened gradient itself in fp32 (``k = d <= 2**24``)."""

    kind = "none"

    def __init__(self, d: int) -> None:
        if d > IDENTITY_MAX_D:
            raise CropiError(f"projection kind 'none' keeps all d={d} coordinates per prompt",
                             field="projection.kind",
                             fix=f"use countsketch for d > {IDENTITY_MAX_D} (e.g. full-model grads)")
        self.k = self.d = int(d)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "d": self.d, "seed": None, "sparse_ratio": 1.0,
                "distribution": None, "chunk": None}

    def _flat(self, grads: Sequence[torch.Tensor], batched: bool) -> torch.Tensor:
        total, b = _numel_per_row(grads, batched)
        if total != self.d:
            raise CropiError(f"gradient has {total} coordinates, the projector expects {self.d}")
        dev = grads[0].device
        return torch.cat([g.reshape(b, -1).to(dev, torch.float32) for g in grads], dim=1)

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._flat(grads, batched=False)[0]

    def project_batch(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._flat(grads, batched=True)

    def _dense(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.eye(self.d, dtype=dtype)


ProjectorFactory = Callable[[ProjectionConfig, int, int, int], Projector]
"""``(cfg, d, chunk, cache_bytes) -> Projector``."""

def register_projector(kind: str, factory: ProjectorFactory) -> None:
    """Register a projector kind (:data:`cropi.influence.registries.PROJECTORS`); duplicate names
    are rejected."""
    PROJECTORS.register(kind, factory)


def countsketch_factory(cfg: ProjectionConfig, d: int, chunk: int, cache_bytes: int) -> Projector:
    if cfg.sparse_ratio != 1.0:
        log.warning("countsketch ignores sparse_ratio=%s (pre-projection dropout is harmful for "
                    "full gradients); spec() records 1.0", cfg.sparse_ratio)
    return CountSketchProjector(cfg.k, d, cfg.seed, chunk=chunk, cache_bytes=cache_bytes)


def sparse_jl_factory(cfg: ProjectionConfig, d: int, chunk: int, cache_bytes: int) -> Projector:
    return SparseJLProjector(cfg.k, d, cfg.seed, sparse_ratio=cfg.sparse_ratio,
                             distribution=cfg.distribution, chunk=chunk, cache_bytes=cache_bytes)


def factorized_factory(cfg: ProjectionConfig, d: int, chunk: int, cache_bytes: int) -> Projector:
    raise CropiError("projection kind 'factorized' needs the model's linear layers",
                     field="projection.kind",
                     fix="build it with FactorizedProjector.from_model(model, cfg) from "
                         "cropi.influence.projection.factorized")


def identity_factory(cfg: ProjectionConfig, d: int, chunk: int, cache_bytes: int) -> Projector:
    return IdentityProjector(d)


def make_projector(cfg: ProjectionConfig, d: int, *, cache_bytes: int = 2**31) -> Projector:
    """The projector of ``cfg`` for gradients of ``d`` coordinates (chunk size: ``CHUNK``)."""
    factory = PROJECTORS.get(cfg.kind, field="projection.kind")
    return factory(cfg, int(d), CHUNK, cache_bytes)


def dense_matrix(proj: Projector, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[k, d]`` dense matrix of ``proj`` rebuilt from its seed (tests, small d only)."""
    if proj.k * proj.d > DENSE_MAX_ENTRIES:
        raise CropiError(f"dense_matrix of a {proj.k} x {proj.d} projector is too large",
                         fix="use it only for small test dimensions")
    dense = getattr(proj, "_dense", None)
    if dense is None:
        raise TypeError(f"projector {type(proj).__name__} has no dense reference")
    return dense(dtype)
