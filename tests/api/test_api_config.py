"""make_config precedence (defaults < base < sections < dotted sets), validation, and a light
``import cropi`` (the API loads on first use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cropi


def test_make_config_precedence(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("name: from-yaml\nrollout:\n  k_pool: 6\n  temperature: 0.5\n")
    cfg = cropi.make_config(base, rollout={"k_pool": 4}, sets={"rollout.temperature": 0.7, "train.lora": True})
    assert (cfg.name, cfg.rollout.k_pool, cfg.rollout.temperature, cfg.train.lora) == ("from-yaml", 4, 0.7, True)
    assert cfg.rollout.k_target == 8  # untouched keys keep their defaults
    again = cropi.make_config(cfg, name="other")
    assert (again.name, again.rollout.k_pool) == ("other", 4)
    assert cropi.make_config({"select": {"ratio": 0.5}}).select.ratio == 0.5
    with pytest.raises(cropi.CropiError, match="unknown key"):
        cropi.make_config(rollout={"kpool": 4})
    with pytest.raises(cropi.CropiError, match="select.ratio"):
        cropi.make_config(sets={"select.ratio": 2.0})


def test_open_run_needs_a_pool_with_in_memory_targets() -> None:
    with pytest.raises(cropi.CropiError, match="without a pool"):
        cropi.open_run(cropi.RunConfig(), targets={"a": []})


def test_import_cropi_is_light() -> None:
    code = ("import sys, cropi; assert 'torch' not in sys.modules; cropi.make_config; "
            "assert 'torch' not in sys.modules, 'make_config pulled torch'; print(sorted(cropi.__all__)[:3])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
