"""Shared helpers for benchmarks: result files, tables, machine info."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("CROPI_BENCH_RESULTS", Path(__file__).parent / "results"))


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    os.replace(tmp, path)
    return path


def load_partial(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def estimate_sparse_jl(d: int, k: int, r: float, seed: int, device: Any = "cpu",
                       n_blocks: int = 2) -> dict[str, Any]:
    """Per-call seconds of SparseJLProjector(k, r) on ``device``: the mask of one chunk and
    ``n_blocks`` P sub-blocks (generated on the CPU, copied, applied) timed, extrapolated to every
    chunk and sub-block. For cells too slow to run in full."""
    import math

    import torch

    from cropi.influence.projection_jl import SparseJLProjector

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
