"""Benchmark result files: the header, writing, reading, their lock, and the console table.

Every benchmark writes its result with :func:`write_result` to ``benchmarks/results/NAME.json``
(``CROPI_BENCH_RESULTS`` overrides the folder). The file is committed with the docs that cite it,
so every number in README.md and docs/ can be checked against it (tests/test_docs_results.py).
Format (``schema`` 1): a header, then the benchmark's own keys (its numbers)::

    {
      "schema": 1,
      "benchmark": "scoring_throughput",              # NAME
      "command": "python benchmarks/scoring_throughput.py --wait-idle 2400",
      "env": {"OMP_NUM_THREADS": "1"},                # thread / device variables that were set
      "started": "2026-11-28T20:01:02Z",              # UTC, when cropi.bench.results was imported
      "date": "2026-11-28T20:31:40Z",                 # UTC, when this file was written
      "wall_s": 1838.2,
      "git": {"commit": "66b99eb...", "dirty": false},  # dirty: tracked files had local changes
      "machine": {"cpu_model": "...", "cores": 2, "cores_usable": 2,
                  "cpu_capability": "AVX512",       # torch's kernel level; bf16_native: the CPU
                  "bf16_native": true,              # computes bf16 (AVX512-BF16 or AMX), not emulated
                  "load_avg_start": [0.9, 0.8, 0.7], "load_avg_end": [1.1, 1.0, 0.9],
                  "idle_at_start": true,            # 1-min load average < half the cores
                  "torch_threads": 2, "torch": "2.x", "python": "3.11.x", "cuda": null},
      ...                                             # the numbers: rows, cells, args, ...
    }

A docs table cites its file with ``<!-- results: benchmarks/results/NAME.json -->`` on the line
above it (benchmarks/results/README.md has the rules). Processes that update one result file
together (read-modify-write) hold ``with locked(lock_path(NAME)):`` (:mod:`cropi.utils.locking`).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _default_results() -> Path:
    """``results/`` next to the running script when it is one of benchmarks/, else
    ``benchmarks/results`` of the source tree this package sits in, else of the working folder."""
    script = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "benchmarks":
        return script / "results"
    repo = Path(__file__).resolve().parents[2]
    base = repo if (repo / "benchmarks").is_dir() else Path.cwd()
    return base / "benchmarks" / "results"


RESULTS = Path(os.environ.get("CROPI_BENCH_RESULTS") or _default_results())
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


def machine_kind() -> dict[str, Any]:
    """What decides a run's numerics on this CPU: its model, torch's kernel level and whether it
    computes bf16 natively (``rollout.dtype=auto`` and the other bf16 switches follow it)."""
    import torch

    from cropi.model.loading import bf16_is_fast

    return {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": bf16_is_fast("cpu")}


def machine() -> dict[str, Any]:
    import torch

    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {**machine_kind(), "cores": cores, "cores_usable": usable,
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


def result_path(name: str, folder: Path | None = None) -> Path:
    """``FOLDER/NAME.json``; FOLDER defaults to :data:`RESULTS`."""
    return (RESULTS if folder is None else Path(folder)) / f"{name}.json"


def lock_path(name: str, folder: Path | None = None) -> Path:
    """The lock file of result NAME (``FOLDER/.NAME.lock``), for :func:`cropi.utils.locking.locked`."""
    return (RESULTS if folder is None else Path(folder)) / f".{name}.lock"


def write_result(name: str, payload: dict[str, Any], folder: Path | None = None) -> Path:
    """Write ``FOLDER/NAME.json`` atomically: :func:`header` then ``payload`` (the numbers)."""
    clash = sorted(set(payload) & set(HEADER_KEYS))
    if clash:
        raise ValueError(f"benchmark result keys {clash} are reserved for the header")
    path = result_path(name, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**header(name), **payload}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def load_result(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The result file NAME (header and numbers), None when there is none yet."""
    path = result_path(name, folder)
    return json.loads(path.read_text()) if path.exists() else None


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Print ``rows`` right-aligned under ``headers`` (floats with 4 significant digits)."""
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
