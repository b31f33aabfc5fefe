"""`cropi compare`: every seed its own beta draw (rollout seed = rollout.seed + seed), or one shared
draw with --shared-rollouts; a comparison keeps its layout."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli

from cropi.report.runs import load_comparison


def _args(model: Path, sets: dict[str, Path], out: Path, name: str) -> list[str]:
    return ["compare", "--model", str(model), "--pool", str(sets["pool"]), "--target", f"a={sets['target']}",
            "--out-dir", str(out), "--name", name, "--arms", "full", "--stages", "1", "--steps-per-stage", "1",
            "--set", "rollout.k_pool=2", "--set", "rollout.k_target=2", "--set", "rollout.batch_size=8",
            "--set", "rollout.max_new_tokens=4", "--set", "rollout.seed=10", "--set", "train.max_new_tokens=4",
            "--set", "train.prompts_per_step=2", "--set", "train.samples_per_prompt=2"]


def test_each_seed_samples_its_own_draw(tiny_model_dir, parity_sets, tmp_path: Path) -> None:
    res = run_cli(_args(tiny_model_dir, parity_sets, tmp_path, "c") + ["--seeds", "0,1"])
    assert res.returncode == 0, res.stderr[-2000:]
    root = tmp_path / "c"
    specs = {s: json.loads((root / f"draws/seed_{s}/rollouts/pool/spec.json").read_text()) for s in (0, 1)}
    assert [specs[s]["rollout"]["seed"] for s in (0, 1)] == [10, 11]
    plan = json.loads((root / "compare.json").read_text())
    assert plan["rollouts"] == "per-seed" and plan["rollout_seeds"] == {"0": 10, "1": 11}
    texts = {s: (root / f"draws/seed_{s}/rollouts/pool/rollouts.parquet").read_bytes() for s in (0, 1)}
    assert texts[0] != texts[1]  # two draws, not one
    assert not (root / "rollouts").exists()
    cmp = load_comparison(root)
    assert sorted(cmp.seed_records) == [0, 1]
    assert all(any(e.get("event") == "rollouts" for e in cmp.seed_records[s]) for s in (0, 1))
    # the layout is kept: continuing with --shared-rollouts is refused in one line
    again = run_cli(_args(tiny_model_dir, parity_sets, tmp_path, "c") + ["--seeds", "2", "--shared-rollouts"])
    assert again.returncode == 2 and "per-seed rollouts" in again.stderr and "Traceback" not in again.stderr


def test_shared_rollouts_keep_one_draw(tiny_model_dir, parity_sets, tmp_path: Path) -> None:
    res = run_cli(_args(tiny_model_dir, parity_sets, tmp_path, "s") + ["--seeds", "0,1", "--shared-rollouts"])
    assert res.returncode == 0, res.stderr[-2000:]
    root = tmp_path / "s"
    assert json.loads((root / "rollouts/pool/spec.json").read_text())["rollout"]["seed"] == 10
    assert not (root / "draws").exists()
    assert json.loads((root / "compare.json").read_text())["rollouts"] == "shared"
