from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    """Run `cropi` (with the test-only parity verifier) in a subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(HERE / "parity_cli.py"), *args], env=env,
                          capture_output=True, text=True, **kw)


def popen_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(HERE / "parity_cli.py"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture()
def parity_sets(tmp_path: Path) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    from parity_cli import write_parity_sets

    return write_parity_sets(tmp_path / "data")
