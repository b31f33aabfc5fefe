"""Helpers of the reliability tests: `cropi` in subprocesses (tests/reliability/gated_cli.py) on
the tiny random model, gated so that a test decides when a command may go on. (Not in conftest.py:
another test folder's conftest module can shadow the name.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "gated_cli.py"), *args], env=cli_env(**env),
                          capture_output=True, text=True, timeout=600)


def start_cli(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start `cropi ARGS` with stdout and stderr going to ``log`` (read it while it runs)."""
    fh = log.open("w")
    proc = subprocess.Popen([sys.executable, str(HERE / "gated_cli.py"), *args], env=cli_env(**env),
                            stdout=fh, stderr=subprocess.STDOUT, text=True)
    fh.close()
    return proc


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    """Wait until ``cond()`` holds (a file or marker: never a fixed time); fail if ``proc`` ended
    first or the (generous) deadline passed."""
    deadline = time.time() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before the condition held")
        if time.time() > deadline:
            raise AssertionError("timed out waiting for the condition")
        time.sleep(0.02)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def rollout_args(model: Path, sets: dict[str, Path], out: Path, name: str = "x") -> list[str]:
    return ["rollout", "--model", str(model), "--pool", str(sets["pool"]), "--target", f"a={sets['target']}",
            "--out-dir", str(out), "--name", name, "--k-pool", "4", "--k-target", "4", "--batch-size", "8",
            "--set", "rollout.chunk_rows=8", "--max-new-tokens", "8"]


def score_args(model: Path, sets: dict[str, Path], out: Path, name: str = "x") -> list[str]:
    return ["score", "--model", str(model), "--pool", str(sets["pool"]), "--target", f"a={sets['target']}",
            "--out-dir", str(out), "--name", name, "--set", "rollout.k_pool=4", "--set", "rollout.k_target=4",
            "--set", "rollout.batch_size=8", "--set", "rollout.chunk_rows=8", "--set", "rollout.max_new_tokens=8", "--k", "64"]


def same_table(a: Path, b: Path) -> bool:
    """Two Parquet tables with the same schema and values (NaN equals NaN)."""
    import numpy as np
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema != tb.schema:
        return False
    for name in ta.column_names:
        ca, cb = (t.column(name).to_numpy(zero_copy_only=False) for t in (ta, tb))
        same = np.array_equal(ca, cb, equal_nan=True) if ca.dtype.kind == "f" else list(ca) == list(cb)
        if not same:
            return False
    return True
