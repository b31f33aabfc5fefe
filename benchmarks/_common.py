"""Shared helpers for benchmarks: result files, tables, machine info.

Every benchmark writes its result with :func:`write_result` to ``benchmarks/results/NAME.json``
(``CROPI_BENCH_RESULTS`` overrides the folder). The file is committed with the docs that cite it,
so every number in README.md and docs/ can be checked against it (tests/test_docs_results.py).
Format (``schema`` 1): a header, then the benchmark's own keys (its numbers)::

    {
      "schema": 1,
      "benchmark": "scoring_throughput",              # NAME
      "command": "python benchmarks/scoring_throughput.py --wait-idle 2400",
      "env": {"OMP_NUM_THREADS": "1"},                # thread / device variables that were set
      "started": "2026-11-28T20:01:02Z",              # UTC, when _common was imported
      "date": "2026-11-28T20:31:40Z",                 # UTC, when this file was written
      "wall_s": 1838.2,
      "git": {"commit": "66b99eb...", "dirty": false},  # dirty: tracked files had local changes
      "machine": {"cpu_model": "...", "cores": 2, "cores_usable": 2,
                  "load_avg_start": [0.9, 0.8, 0.7], "load_avg_end": [1.1, 1.0, 0.9],
                  "idle_at_start": true,            # 1-min load average < half the cores
                  "torch_threads": 2, "torch": "2.x", "python": "3.11.x", "cuda": null},
      ...                                             # the numbers: rows, cells, args, ...
    }

A docs table cites its file with ``<!-- results: benchmarks/results/NAME.json -->`` on the line
above it (benchmarks/results/README.md has the rules).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("CROPI_BENCH_RESULTS", Path(__file__).parent / "results"))
SCHEMA = 1
HEADER_KEYS = ("schema", "benchmark", "command", "env", "started", "date", "wall_s", "git", "machine")
_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE")
_STARTED = time.time()
_LOAD_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict[str, Any]:
    """Commit of the working tree and whether its tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                 cwd=Path(__file__).parent)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine() -> dict[str, Any]:
    import torch

    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_model": cpu_model(), "cores": cores, "cores_usable": usable,
            "load_avg_start": _LOAD_START, "load_avg_end": load_end,
            "idle_at_start": None if _LOAD_START is None else _LOAD_START[0] < cores / 2,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def header(name: str) -> dict[str, Any]:
    """The header every result file starts with (see the module docstring)."""
    now = time.time()
    return {"schema": SCHEMA, "benchmark": name,
            "command": "python " + shlex.join(sys.argv),
            "env": {k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
            "started": _utc(_STARTED), "date": _utc(now), "wall_s": round(now - _STARTED, 1),
            "git": git_state(), "machine": machine()}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``RESULTS/NAME.json`` atomically: :func:`header` then ``payload`` (the numbers)."""
    clash = sorted(set(payload) & set(HEADER_KEYS))
    if clash:
        raise ValueError(f"benchmark result keys {clash} are reserved for the header")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**header(name), **payload}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Exclusive lock on result NAME across processes (read-modify-write of a shared file)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
