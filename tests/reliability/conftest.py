"""Fixtures of the reliability tests (helpers: reliability_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture()
def gated_sets(tmp_path: Path) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    from gated_cli import write_sets

    return write_sets(tmp_path / "data")
