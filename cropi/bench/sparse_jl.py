"""Timing estimate of the sparse JL projector for cells too slow to run in full
(benchmarks/scoring_throughput.py, benchmarks/gpu_scoring.py)."""

from __future__ import annotations

import math
import time
from typing import Any


def estimate_sparse_jl(d: int, k: int, r: float, seed: int, device: Any = "cpu",
                       n_blocks: int = 2) -> dict[str, Any]:
    """Per-call seconds of SparseJLProjector(k, r) on ``device``: the mask of one chunk and
    ``n_blocks`` P sub-blocks (generated on the CPU, copied, applied) timed, extrapolated to every
    chunk and sub-block. For cells too slow to run in full."""
    import torch

    from cropi.influence.projection.jl import SparseJLProjector

    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    proj = SparseJLProjector(k, d, seed, sparse_ratio=r, cache_bytes=0)
    t = time.perf_counter()
    kept = proj._kept(0)
    mask_s = (time.perf_counter() - t) * proj.n_chunks
    blocks = sum(math.ceil(r * proj.chunk_len(c) / proj.block_cols) for c in range(proj.n_chunks))
    cols = min(proj.block_cols, kept.numel())
    v, out = torch.randn(1, cols, device=device), torch.zeros(1, k, device=device)
    sync()
    t = time.perf_counter()
    for b in range(n_blocks):
        out.addmm_(v, proj._block(0, b, cols).to(device))
    sync()
    block_s = (time.perf_counter() - t) / n_blocks
    return {"per_call_s": mask_s + block_s * blocks, "block_s": block_s, "blocks": blocks,
            "random_numbers_per_call": k * r * d,
            "note": f"extrapolated from {n_blocks} timed sub-blocks of {cols} x {k}"}
