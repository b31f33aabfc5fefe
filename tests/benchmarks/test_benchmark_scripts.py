"""The scripts in benchmarks/ run as ``python benchmarks/NAME.py`` on cropi's public names alone:
no ``sys.path`` patches, no imports of each other (what they share is in cropi.bench), no private
cropi names, and every cropi name they import exists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))
# private names still imported, each waiting for a public name in the module that owns it


def _cropi_imports(path: Path) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cropi":
            out += [(node.module, a.name) for a in node.names]
    return out


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_no_sys_path_and_no_sibling_imports(path: Path) -> None:
    text = path.read_text()
    assert "sys.path" not in text
    siblings = {p.stem for p in SCRIPTS}
    for node in ast.walk(ast.parse(text)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not {n.split(".")[0] for n in names} & siblings, f"{path.name} imports {names}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_only_public_cropi_names_that_exist(path: Path) -> None:
    for module, name in _cropi_imports(path):
        assert not any(part.startswith("_") for part in [*module.split("."), name]), \
            f"{path.name}: from {module} import {name}"
        mod = importlib.import_module(module)
        assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), \
            f"{path.name}: {module} has no {name}"
