"""Ctrl-C and SIGTERM (issue 23, deliverable 4): the first stops the command at the next safe point,
saying where and how to resume; a second stops it at once. Either way nothing is half-written,
no lock or temporary is left, and the rerun ends equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import files_under, rollout_args, run_cli, start_cli, wait_for

from cropi.curriculum.rundir import RunDir
from cropi.influence.features import FeatureStore
from cropi.utils.errors import Stopped, clear_stop, request_stop, stop_on_signals, stop_requested

STALE = (".tmp-", ".cropi.lock", ".linking")


@pytest.fixture(scope="module")
def clean(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted rollout run to compare with (the gated sets of a module-wide folder)."""
    import sys

    from reliability_helpers import HERE

    sys.path.insert(0, str(HERE))
    from gated_cli import write_sets

    base = tmp_path_factory.mktemp("clean")
    sets = write_sets(base / "data")
    res = run_cli(rollout_args(tiny_model_dir, sets, base / "runs"))
    assert res.returncode == 0, res.stderr
    return base


def _interrupted(tiny_model_dir: Path, clean: Path, tmp_path: Path, signals: list[int]) -> tuple[int, str]:
    """`cropi rollout` held inside its first chunk, sent ``signals`` (each once the previous one
    was acknowledged), then let go; returns its exit code and output."""
    sets = {"pool": clean / "data" / "pool.jsonl", "target": clean / "data" / "target.jsonl"}
    args = rollout_args(tiny_model_dir, sets, tmp_path / "runs")
    gate, inside, log = tmp_path / "gate", tmp_path / "inside", tmp_path / "cli.log"
    proc = start_cli(args, log, CROPI_TEST_GATE=str(gate), CROPI_TEST_INSIDE=str(inside))
    try:
        wait_for(inside.exists, proc)
        proc.send_signal(signals[0])
        wait_for(lambda: "stopping at the next safe point" in log.read_text(), proc)
        for sig in signals[1:]:
            proc.send_signal(sig)
    finally:
        gate.touch()
    return proc.wait(timeout=600), log.read_text()


def _resumes_to_clean(tiny_model_dir: Path, clean: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "x"
    assert not [f for f in files_under(run) if any(s in f for s in STALE)]
    sets = {"pool": clean / "data" / "pool.jsonl", "target": clean / "data" / "target.jsonl"}
    again = run_cli(rollout_args(tiny_model_dir, sets, tmp_path / "runs"))
    assert again.returncode == 0, again.stderr
    for sub in ("pool", "targets/a"):
        a, b = run / "rollouts" / sub / "rollouts.parquet", clean / "runs/x/rollouts" / sub / "rollouts.parquet"
        assert a.read_bytes() == b.read_bytes()


def test_sigterm_stops_at_the_next_chunk(tiny_model_dir: Path, clean: Path, tmp_path: Path) -> None:
    rc, out = _interrupted(tiny_model_dir, clean, tmp_path, [signal.SIGTERM])
    assert rc == 143, out
    assert "Traceback" not in out
    said = " ".join(out.split())
    assert "SIGTERM: stopping at the next safe point" in said
    assert "stopped after 1 chunk(s) of beta's rollouts in" in said and "rerun the same command to resume" in said
    parts = tmp_path / "runs" / "x" / "rollouts" / "pool" / "parts"
    assert [p.name for p in sorted(parts.glob("*.parquet"))] == ["part-00000.parquet"]  # the chunk it finished
    _resumes_to_clean(tiny_model_dir, clean, tmp_path)


def test_a_second_ctrl_c_stops_at_once(tiny_model_dir: Path, clean: Path, tmp_path: Path) -> None:
    rc, out = _interrupted(tiny_model_dir, clean, tmp_path, [signal.SIGINT, signal.SIGINT])
    assert rc == 130, out
    assert "Traceback" not in out and "interrupted: every file is written whole or not at all" in out
    assert not list((tmp_path / "runs" / "x" / "rollouts" / "pool").glob("parts/*.parquet"))  # stopped inside chunk 0
    _resumes_to_clean(tiny_model_dir, clean, tmp_path)


def test_safe_points(tmp_path: Path) -> None:
    """A requested stop ends work at a phase's start and after a batch of feature rows, with
    everything before it written."""
    run = RunDir(tmp_path / "run")
    ids = [f"p{i}" for i in range(4)]
    store = FeatureStore.open(tmp_path / "pool", ids, 8, "fp16", {"t": 1})
    request_stop("SIGTERM")
    try:
        with pytest.raises(Stopped) as err:
            run.done(1, "scored")
        assert err.value.where == "before stage 1's scoring"
        with pytest.raises(Stopped) as err:
            store.write(ids[:2], np.ones((2, 8)), [False, False])
        assert "after 2 of 4 prompts of" in err.value.where
        assert store.pending() == ids[2:]  # the batch is written and marked before it stops
    finally:
        clear_stop()


def test_stop_on_signals_in_process() -> None:
    said = []
    with stop_on_signals(said.append):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_requested() == "SIGTERM" and said and "stopping at the next safe point" in said[0]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stop_requested() is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
