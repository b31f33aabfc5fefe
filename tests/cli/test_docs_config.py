"""docs/configuration.md lists every config key with its current default."""

from __future__ import annotations

from pathlib import Path

from cropi.cli.common import config_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_doc_matches_code() -> None:
    text = DOC.read_text()
    missing = [line.strip() for line in config_reference().splitlines() if line.strip() not in text]
    assert not missing, f"regenerate docs/configuration.md with `cropi config`: {missing[:3]}"
