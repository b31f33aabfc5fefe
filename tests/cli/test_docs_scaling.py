"""docs/scaling.md names only config keys, commands and options that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from cropi.cli import app
from cropi.config import RunConfig, from_dict

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


def test_scaling_config_block_is_a_valid_config() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/scaling.md lost its config block"
    for block in blocks:
        from_dict(RunConfig, yaml.safe_load(block))  # raises on an unknown key or a bad value


def _cropi_lines() -> list[list[str]]:
    lines = []
    for line in DOC.read_text().splitlines():
        line = line.strip()
        if line.startswith("cropi "):
            lines.append(line.split("#")[0].split())
    return lines


@pytest.mark.parametrize("argv", _cropi_lines(), ids=lambda a: " ".join(a[:2]))
def test_scaling_commands_and_options_exist(argv: list[str]) -> None:
    group = get_command(app)
    cmd = group.commands.get(argv[1])  # type: ignore[attr-defined]
    assert cmd is not None, f"no command `cropi {argv[1]}`"
    known = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
    for word in argv[2:]:
        if word.startswith("--"):
            assert word in known, f"`cropi {argv[1]}` has no option {word}"
