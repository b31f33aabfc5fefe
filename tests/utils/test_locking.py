"""cropi.utils.locking: one flock-based lock whose file names its owner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cropi.utils.locking import LockHeld, is_held, lock_owner, locked

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_the_owner_is_written_while_held_and_cleared_after(tmp_path: Path) -> None:
    path = tmp_path / "sub" / ".x.lock"
    assert lock_owner(path) is None and not is_held(path)
    with locked(path) as owner:
        assert is_held(path)
        assert lock_owner(path) == owner
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert set(owner) == {"pid", "host", "command", "started"}
        assert owner["started"].endswith("Z")
    assert not is_held(path) and lock_owner(path) is None
    with locked(path):  # taken again after release
        pass


def test_no_wait_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / ".x.lock"
    with locked(path) as owner:  # a second open file of this process is another holder
        with pytest.raises(LockHeld) as err:
            with locked(path, wait=False):
                pass
    assert err.value.owner == owner and str(os.getpid()) in str(err.value)


def test_processes_take_turns(tmp_path: Path) -> None:
    """Read-modify-write of one file by two processes under the lock loses no update."""
    counter = tmp_path / "n.txt"
    counter.write_text("0")
    code = """
        import sys, time
        from pathlib import Path
        from cropi.utils.locking import locked
        counter = Path(sys.argv[1])
        for _ in range(40):
            with locked(counter.with_name(".n.lock")):
                n = int(counter.read_text())
                time.sleep(0.001)
                counter.write_text(str(n + 1))
    """
    procs = [_python(code, str(counter)) for _ in range(2)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert counter.read_text() == "80"


def test_a_killed_holder_frees_the_lock_and_leaves_its_owner(tmp_path: Path) -> None:
    path = tmp_path / ".x.lock"
    code = """
        import sys, time
        from cropi.utils.locking import locked
        with locked(sys.argv[1]):
            print("held", flush=True)
            time.sleep(60)
    """
    proc = _python(code, str(path))
    try:
        assert proc.stdout.readline().strip() == "held"
        assert is_held(path) and lock_owner(path)["pid"] == proc.pid
        with pytest.raises(LockHeld):
            with locked(path, wait=False):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.time() + 10
    while is_held(path) and time.time() < deadline:
        time.sleep(0.05)
    assert not is_held(path)
    assert lock_owner(path)["pid"] == proc.pid  # stale: the holder died inside the block
    with locked(path, wait=False) as owner:
        assert lock_owner(path) == owner
