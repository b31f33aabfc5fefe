"""Shared machinery of the chunked projectors: the global coordinate index, chunks, table cache.

A gradient arrives as a sequence of parameter-gradient tensors in a fixed order. Their flattened
concatenation defines a *global* coordinate index ``0 .. d-1``; it is cut into chunks of ``chunk``
coordinates (``CHUNK = 2**22`` by default; the last chunk is shorter). Every random table of a
projector belongs to one chunk and is regenerated from ``derive_seed(seed, kind, chunk_idx, ...)``
with a CPU ``torch.Generator``. A projection therefore depends only on (seed, kind, k, d, chunk),
never on how the coordinates are split into tensors nor on the device; the concatenated vector is
never built (only per-chunk views of the input tensors are touched).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from cropi.utils.errors import CropiError
from cropi.utils.seeding import derive_seed

log = logging.getLogger(__name__)

CHUNK: int = 2**22
"""Coordinates per chunk of the global index (a constant: it changes every random table)."""

Pieces = list[tuple[int, torch.Tensor]]
"""The parts of one chunk: ``(offset inside the chunk, values [B, n])``, in coordinate order."""


def _numel_per_row(grads: Sequence[torch.Tensor], batched: bool) -> tuple[int, int]:
    """Total coordinates per row and the batch size B (1 when not batched)."""
    if not grads:
        raise CropiError("empty gradient: no parameter tensors were given to the projector")
    if not batched:
        return sum(g.numel() for g in grads), 1
    sizes = {g.shape[0] if g.dim() > 0 else -1 for g in grads}
    if len(sizes) != 1 or -1 in sizes:
        raise CropiError(f"project_batch needs tensors [B, *shape] with one B; got {sorted(sizes)}")
    b = sizes.pop()
    return sum(math.prod(g.shape[1:]) for g in grads), b


def iter_chunks(grads: Sequence[torch.Tensor], d: int, chunk: int, batched: bool
                ) -> Iterator[tuple[int, Pieces]]:
    """Walk the global index chunk by chunk.

    Args:
        grads: tensors ``[*shape]`` (or ``[B, *shape]`` when ``batched``) whose flattened
            concatenation (per row) has ``d`` coordinates.
    Yields:
        ``(chunk_idx, pieces)`` for every chunk in order; the pieces of a chunk cover it exactly,
        each a view ``[B, n]`` (B = 1 when not batched) in the input's dtype and device.
    """
    total, b = _numel_per_row(grads, batched)
    if total != d:
        raise CropiError(f"gradient has {total} coordinates but the projector was built for d={d}",
                         fix="use the same parameter selection as when the projector was made")
    pos, cur, pieces = 0, -1, []  # type: int, int, Pieces
    for g in grads:
        flat = g.reshape(b, -1) if batched else g.reshape(1, -1)
        n, start = flat.shape[1], 0
        while start < n:
            c, off = divmod(pos + start, chunk)
            take = min(n - start, chunk - off)
            if c != cur:
                if pieces:
                    yield cur, pieces
                cur, pieces = c, []
            pieces.append((off, flat[:, start:start + take]))
            start += take
        pos += n
    if pieces:
        yield cur, pieces


class TableCache:
    """Per-device cache of regenerated random tables, filled until ``budget`` bytes, never evicted.

    Fill-until-full (rather than LRU) keeps the first chunks resident under cyclic scans over all
    chunks, which is the access pattern of projecting gradient after gradient.
    """

    def __init__(self, budget: int) -> None:
        self.budget, self.used = int(budget), 0
        self._tables: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}

    def get(self, key: tuple[Any, ...], device: torch.device,
            make: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """The tables for ``key`` on ``device``; ``make()`` builds them on the CPU on a miss."""
        full_key = (*key, str(device))
        hit = self._tables.get(full_key)
        if hit is not None:
            return hit
        tables = tuple(t.to(device) for t in make())
        size = sum(t.numel() * t.element_size() for t in tables)
        if self.used + size <= self.budget:
            self._tables[full_key] = tables
            self.used += size
        return tables

    def clear(self) -> None:
        self._tables.clear()
        self.used = 0


class ChunkedProjector:
    """Base of projectors whose randomness lives in per-chunk tables.

    Subclasses set ``kind`` and implement ``_apply`` (add one chunk's contribution to ``out``)
    and ``_dense_chunk`` (the chunk's columns of the dense matrix, for tests).
    """

    kind: str = "chunked"

    def __init__(self, k: int, d: int, seed: int, *, chunk: int = CHUNK,
                 cache_bytes: int = 2**31) -> None:
        if k < 1 or d < 1 or chunk < 1:
            raise CropiError(f"projector needs k >= 1, d >= 1, chunk >= 1; got k={k}, d={d}")
        self.k, self.d, self.seed, self.chunk = int(k), int(d), int(seed), int(chunk)
        self.cache = TableCache(cache_bytes)

    @property
    def n_chunks(self) -> int:
        return -(-self.d // self.chunk)

    def chunk_len(self, c: int) -> int:
        return min(self.chunk, self.d - c * self.chunk)

    def generator(self, c: int, *extra: object) -> torch.Generator:
        """A CPU generator seeded from ``derive_seed(seed, kind, c, *extra)``."""
        return torch.Generator(device="cpu").manual_seed(derive_seed(self.seed, self.kind, c, *extra))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "d": self.d, "seed": self.seed,
                "sparse_ratio": 1.0, "distribution": None, "chunk": self.chunk}

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[k]`` float32 projection of one gradient given as tensors ``[*shape]``."""
        return self._run(grads, batched=False)[0]

    def project_batch(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B, k]`` float32 projections of B gradients given as tensors ``[B, *shape]``."""
        return self._run(grads, batched=True)

    def _run(self, grads: Sequence[torch.Tensor], batched: bool) -> torch.Tensor:
        _, b = _numel_per_row(grads, batched)
        out = torch.zeros(b, self.k, dtype=torch.float32, device=grads[0].device)
        for c, pieces in iter_chunks(grads, self.d, self.chunk, batched):
            self._apply(c, [(off, x.to(out.device)) for off, x in pieces], out)
        return out

    def _apply(self, c: int, pieces: Pieces, out: torch.Tensor) -> None:
        raise NotImplementedError

    def _dense_chunk(self, c: int) -> torch.Tensor:
        raise NotImplementedError

    def _dense(self, dtype: torch.dtype) -> torch.Tensor:
        """``[k, d]`` dense reference (small d only)."""
        cols = [self._dense_chunk(c).to(dtype) for c in range(self.n_chunks)]
        return torch.cat(cols, dim=1)
