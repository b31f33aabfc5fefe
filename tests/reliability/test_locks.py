"""One writer per run: the run's lock (cropi.utils.locking.hold through RunDir), re-entrant in a
process, refused with one line naming the owner, waited for when asked, taken over from a dead
holder (and said), and leaving no file behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from reliability_helpers import ROOT, wait_for

from cropi.curriculum.rundir import LOCK_FILE, RunDir
from cropi.utils.errors import Stopped, clear_stop, request_stop
from cropi.utils.locking import LockHeld, hold, holds, is_held, lock_owner, waiting

HOLDER = """
    import sys, time
    from pathlib import Path
    from cropi.curriculum.rundir import RunDir
    run = RunDir(sys.argv[1])
    run.log_metrics("hello")                     # the first write takes the run's lock
    Path(sys.argv[2]).touch()                     # tell the test it holds it
    while not Path(sys.argv[3]).exists():         # until the test lets it go
        time.sleep(0.02)
    run.release()
"""


def _holder(root: Path, tmp: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    held, go = tmp / "held", tmp / "go"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(root), str(held), str(go)],
                            env=env)
    wait_for(held.exists, proc)
    return proc, go


def test_hold_is_reentrant_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / LOCK_FILE
    a = hold(path)
    b = hold(path)  # the same process: one more reference, not a deadlock
    assert holds(path) and is_held(path) and lock_owner(path)["pid"] == os.getpid()
    a.release()
    a.release()  # idempotent
    assert holds(path) and is_held(path)
    b.release()
    assert not holds(path) and not path.exists()


def test_a_second_writer_stops_at_once_naming_the_owner(tmp_path: Path) -> None:
    root = tmp_path / "run"
    proc, go = _holder(root, tmp_path)
    try:
        mine = RunDir(root)
        with pytest.raises(LockHeld) as err:
            mine.mark(0, "scored")
        text = str(err.value)
        assert "\n" not in text and f"pid {proc.pid}" in text and "in use by" in text and "--wait" in text
        assert str(root) in text and "-c" in text  # the owner's command line
        assert not (root / "stages").exists()  # nothing written by the refused writer
    finally:
        go.touch()
        proc.wait(timeout=60)
    assert not (root / LOCK_FILE).exists()


def test_wait_says_for_whom_then_writes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "run"
    proc, go = _holder(root, tmp_path)
    done = threading.Event()

    def write() -> None:
        with waiting():
            RunDir(root).log_metrics("second")
        done.set()

    with caplog.at_level(logging.WARNING, logger="cropi.utils.locking"):
        t = threading.Thread(target=write)
        t.start()
        wait_for(lambda: "waiting for run" in caplog.text)
        assert not done.is_set() and f"pid {proc.pid}" in caplog.text
        go.touch()
        t.join(timeout=60)
    proc.wait(timeout=60)
    assert done.is_set()
    events = (root / "metrics.jsonl").read_text().splitlines()
    assert [e.split('"event": ')[1].split('"')[1] for e in events] == ["hello", "second"]


def test_a_dead_holders_lock_is_taken_over_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "run"
    proc, _ = _holder(root, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    wait_for(lambda: not is_held(root / LOCK_FILE))
    assert lock_owner(root / LOCK_FILE)["pid"] == proc.pid  # left behind by the killed holder
    (root / "stages" / "stage_000").mkdir(parents=True)
    (root / "stages" / "stage_000" / ".tmp-state.json.abc").write_text("{")  # its half-written file
    (root / ".tmp-metrics").write_text("")
    with caplog.at_level(logging.WARNING):
        run = RunDir(root)
        run.mark(0, "scored")
    assert f"took over the lock of run {root} from pid {proc.pid}" in caplog.text
    assert "no longer running" in caplog.text and "removed 2 temporary files" in caplog.text
    assert lock_owner(root / LOCK_FILE)["pid"] == os.getpid()
    run.release()
    assert not (root / LOCK_FILE).exists()
    assert sorted(p.name for p in root.rglob("*")) == ["metrics.jsonl", "stage_000", "stages", "state.json"]


def test_a_stop_request_ends_a_wait(tmp_path: Path) -> None:
    root = tmp_path / "run"
    proc, go = _holder(root, tmp_path)
    try:
        request_stop("SIGINT")
        with pytest.raises(Stopped) as err, waiting():
            RunDir(root).acquire()
        assert "waiting for run" in err.value.where
    finally:
        clear_stop()
        go.touch()
        proc.wait(timeout=60)


def test_save_config_ends_the_operation(tmp_path: Path) -> None:
    from cropi.config import RunConfig
    from cropi.curriculum.phases import Run

    run = Run(RunConfig(name="r", out_dir=str(tmp_path)))
    run.dir.log_metrics("x")
    assert holds(run.dir.lock_path)
    run.save_config()
    assert not holds(run.dir.lock_path) and not run.dir.lock_path.exists()


def test_a_command_that_only_read_needs_no_lock(tmp_path: Path) -> None:
    """Recording an unchanged config (the end of every command) takes no lock: `cropi select`
    printing a stored selection runs beside a writer."""
    from cropi.config import RunConfig

    cfg = RunConfig(name="r", out_dir=str(tmp_path))
    first = RunDir(tmp_path / "r")
    first.write_config(cfg)
    first.release()
    proc, go = _holder(tmp_path / "r", tmp_path)
    try:
        assert RunDir(tmp_path / "r").write_config(cfg) == []
        with pytest.raises(LockHeld):
            RunDir(tmp_path / "r").write_config(RunConfig(name="r", out_dir=str(tmp_path), data=cfg.data,
                                                          select=type(cfg.select)(ratio=0.5)))
    finally:
        go.touch()
        proc.wait(timeout=60)
