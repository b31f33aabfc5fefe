"""`cropi rollout` on a tiny random model: kill -9 mid-way, rerun, same files as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from cropi.utils.io import read_json


def _cmd(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cropi.cli", "rollout", "--model", str(model), "--suite", "tiny",
            "--out-dir", str(out), "--name", "r", "--k-pool", "4", "--k-target", "4",
            "--batch-size", "4", "--set", "rollout.chunk_rows=4", "--max-new-tokens", "12"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_rollout_kill9_resume_equals_uninterrupted(tiny_model_dir: Path, tmp_path: Path) -> None:
    full = subprocess.run(_cmd(tiny_model_dir, tmp_path / "a"), env=_env(), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    assert "beta pass rates" in full.stdout

    proc = subprocess.Popen(_cmd(tiny_model_dir, tmp_path / "b"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "b" / "r" / "rollouts" / "pool" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(parts.glob("part-*.parquet")))
    assert 3 <= n_before < 24, "the kill should land mid-way through the pool"
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}

    again = subprocess.run(_cmd(tiny_model_dir, tmp_path / "b"), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    for sub in ("pool", "targets/chain"):
        a = tmp_path / "a" / "r" / "rollouts" / sub
        b = tmp_path / "b" / "r" / "rollouts" / sub
        assert pq.read_table(a / "rollouts.parquet").equals(pq.read_table(b / "rollouts.parquet"))
        assert (a / "rollouts.parquet").read_bytes() == (b / "rollouts.parquet").read_bytes()
        assert read_json(a / "manifest.json") == read_json(b / "manifest.json")
    assert mtimes
    # finished prompts were not recomputed: the two runs together sampled each pool prompt once
    events = [json.loads(line) for line in (tmp_path / "b" / "r" / "metrics.jsonl").read_text().splitlines()]
    sampled = [e["sampled"]["pool"] for e in events if e["event"] == "rollouts"]
    assert len(sampled) == 1 and sampled[0] == 24 - n_before  # the killed run logged nothing
    from cropi.model.loading import bf16_is_fast  # rollout.dtype=auto, resolved for this machine

    dtypes = {e["dtype"] for e in events if e["event"] == "rollouts"}
    assert dtypes == {"bfloat16" if bf16_is_fast("cpu") else "float32"}


def test_rollout_refuses_changed_spec(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = subprocess.run(_cmd(tiny_model_dir, tmp_path), env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    changed = _cmd(tiny_model_dir, tmp_path) + ["--temperature", "0.7"]
    res = subprocess.run(changed, env=_env(), capture_output=True, text=True)
    assert res.returncode == 2
    assert "temperature" in res.stderr and "--overwrite" in res.stderr
