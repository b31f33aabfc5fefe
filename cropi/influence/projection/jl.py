"""Paper-faithful sparse Johnson-Lindenstrauss projector: ``g~ = P S g``.

- ``S`` keeps each coordinate independently with probability ``r = sparse_ratio`` (a Bernoulli
  mask drawn per chunk from ``derive_seed(seed, "sparse-jl", c)``); d' ~ r d coordinates survive.
  With r = 1 there is no mask.
- ``P`` is a dense ``k x d'`` matrix, Rademacher (+-1/sqrt(k)) or Gaussian (N(0, 1/k)). Its
  columns are generated per chunk in sub-blocks of ``block_cols = max(1, 2**26 // k)`` kept
  coordinates (<= 256 MB of fp32 per sub-block), sub-block b of chunk c from
  ``derive_seed(seed, "sparse-jl", c, "block", b)``. With these scales ``E[P^T P] = I`` on the
  kept coordinates, so ``E[<PSg, PSh>] = <Sg, Sh>`` (which is ``r <g, h>`` in expectation over
  the mask; cosine scores do not see that factor).

Cost: every call regenerates ``k * d'`` random numbers (about 4-5 ns each with 2 CPU threads,
i.e. ~4 s for k = 4096, d' = 2e5; 1.1e11 numbers, ~10 min, for k = 8192 and
d' = 0.1 * 134.5e6) plus a ``k x d'`` GEMM per batch. The tables are generated on the CPU even
for CUDA inputs (device independence), so the generation cost is not hidden by a GPU. ``project_batch`` generates each sub-block once for all B rows
(one GEMM ``[B, cols] @ [cols, k]``), so its cost per row falls as 1/B until the GEMM dominates.
Sub-blocks are cached while the cache budget allows (useful for LoRA-sized d'). For full-model
gradients on a CPU prefer ``countsketch``; this projector is for fidelity comparisons with the paper.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cropi.influence.projection.core import CHUNK, ChunkedProjector, Pieces
from cropi.utils.errors import CropiError

JL_BLOCK_ELEMS: int = 2**26
"""Entries of one generated sub-block of P (256 MB in fp32); fixes ``block_cols`` for a given k."""


class SparseJLProjector(ChunkedProjector):
    """Bernoulli coordinate mask then a dense Rademacher/Gaussian JL map, regenerated per chunk."""

    kind = "sparse-jl"

    def __init__(self, k: int, d: int, seed: int, *, sparse_ratio: float = 1.0,
                 distribution: str = "rademacher", chunk: int = CHUNK,
                 cache_bytes: int = 2**31) -> None:
        super().__init__(k, d, seed, chunk=chunk, cache_bytes=cache_bytes)
        if not 0 < sparse_ratio <= 1:
            raise CropiError(f"sparse_ratio must be in (0, 1], got {sparse_ratio}",
                             field="projection.sparse_ratio")
        if distribution not in ("rademacher", "gaussian"):
            raise CropiError(f"unknown distribution {distribution!r}",
                             field="projection.distribution", fix="use rademacher or gaussian")
        self.sparse_ratio, self.distribution = float(sparse_ratio), distribution
        self.block_cols = max(1, JL_BLOCK_ELEMS // self.k)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "sparse_ratio": self.sparse_ratio,
                "distribution": self.distribution, "block_cols": self.block_cols}

    def _kept(self, c: int) -> torch.Tensor:
        """``[d'_c]`` int64 sorted offsets (inside chunk c) of the kept coordinates (CPU)."""
        n = self.chunk_len(c)
        if self.sparse_ratio >= 1.0:
            return torch.arange(n)
        mask = torch.rand(n, generator=self.generator(c)) < self.sparse_ratio
        return mask.nonzero().squeeze(1)

    def _block(self, c: int, b: int, cols: int) -> torch.Tensor:
        """``[cols, k]`` float32 sub-block b of chunk c: rows are kept coordinates (CPU)."""
        gen, scale = self.generator(c, "block", b), 1.0 / math.sqrt(self.k)
        if self.distribution == "gaussian":
            return torch.randn(cols, self.k, generator=gen).mul_(scale)
        signs = torch.randint(0, 2, (cols, self.k), generator=gen, dtype=torch.int8)
        return signs.float().mul_(2.0 * scale).sub_(scale)

    def _gather(self, kept: torch.Tensor | None, pieces: Pieces) -> torch.Tensor:
        """``[B, d'_c]`` float32 kept values of one chunk (``kept`` None: all), in order."""
        if kept is None:
            return torch.cat([x.float() for _, x in pieces], dim=1)
        vals = []
        for off, x in pieces:
            lo = int(torch.searchsorted(kept, off))
            hi = int(torch.searchsorted(kept, off + x.shape[1]))
            vals.append(x.index_select(1, kept[lo:hi] - off).float())
        return torch.cat(vals, dim=1)

    def _apply(self, c: int, pieces: Pieces, out: torch.Tensor) -> None:
        kept = None
        if self.sparse_ratio < 1.0:
            (kept,) = self.cache.get(("kept", c), out.device, lambda: (self._kept(c),))
        v = self._gather(kept, pieces)
        n_kept = v.shape[1]
        for b, s in enumerate(range(0, n_kept, self.block_cols)):
            e = min(s + self.block_cols, n_kept)
            (m,) = self.cache.get(("block", c, b), out.device,
                                  lambda b=b, e=e, s=s: (self._block(c, b, e - s),))
            out.addmm_(v[:, s:e], m)

    def _dense_chunk(self, c: int) -> torch.Tensor:
        kept = self._kept(c)
        cols = torch.zeros(self.k, self.chunk_len(c), dtype=torch.float64)
        for b, s in enumerate(range(0, kept.numel(), self.block_cols)):
            e = min(s + self.block_cols, kept.numel())
            cols[:, kept[s:e]] = self._block(c, b, e - s).double().T
        return cols
