"""A run directory remembers how it was made: later commands on it take its stored config as their
base, config.yaml is never rewritten silently, and a pool of your own uses no built-in suite."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import run_cli

from cropi.influence.scores import read_scores, scorer_spec
from cropi.select import read_selection

SMALL = ["--set", "rollout.batch_size=4", "--set", "rollout.max_new_tokens=8",
         "--set", "projection.k=64", "--set", "select.ratio=0.25",
         "--set", "curriculum.stages=1", "--set", "train.steps_per_stage=1",
         "--set", "train.max_new_tokens=8", "--set", "train.prompts_per_step=2",
         "--set", "train.samples_per_prompt=2", "--set", "eval.samples=0"]


def _ok(proc) -> None:  # noqa: ANN001 - subprocess.CompletedProcess
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_commands_continue_a_run_with_its_stored_config(tiny_model_dir: Path, parity_sets: dict[str, Path],
                                                        tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "byo"
    where = ["--name", "byo", "--out-dir", str(tmp_path / "runs")]
    _ok(run_cli(["rollout", *where, "--model", str(tiny_model_dir), "--pool", str(parity_sets["pool"]),
                 "--target", f"a={parity_sets['target']}", "--k-pool", "4", "--k-target", "3",
                 "--temperature", "0.7", *SMALL]))
    config = (run_dir / "config.yaml").read_bytes()
    stored = yaml.safe_load(config)
    assert stored["data"]["suite"] is None  # --pool without --suite: no built-in suite at all
    assert stored["data"]["tests"] == {}
    assert stored["rollout"]["k_pool"] == 4 and stored["rollout"]["temperature"] == 0.7

    score = run_cli(["score", *where])
    _ok(score)
    _ok(run_cli(["select", *where]))
    assert read_selection(run_dir / "stages" / "stage_000" / "selection.json")["budget"] == 4  # 0.25 x 16
    run = run_cli(["run", *where])
    _ok(run)
    assert (run_dir / "config.yaml").read_bytes() == config
    assert not (run_dir / "config.history.jsonl").exists()
    # no test sets: evaluation is skipped, said once, and nothing was evaluated
    assert (run.stdout + run.stderr).count("evaluation is skipped") == 1
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "train" in events and "eval" not in events


def test_changes_are_refused_or_kept_in_history(tiny_model_dir: Path, parity_sets: dict[str, Path],
                                                tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "h"
    where = ["--name", "h", "--out-dir", str(tmp_path / "runs")]
    _ok(run_cli(["score", *where, "--model", str(tiny_model_dir), "--pool", str(parity_sets["pool"]),
                 "--target", f"a={parity_sets['target']}", "--set", "rollout.k_pool=4",
                 "--set", "rollout.k_target=3", *SMALL]))
    _ok(run_cli(["select", *where]))
    config = (run_dir / "config.yaml").read_bytes()
    selection = (run_dir / "stages" / "stage_000" / "selection.json").read_bytes()

    refused = run_cli(["select", *where, "--ratio", "0.5"])
    assert refused.returncode == 2
    assert "budget: 4 -> 8" in refused.stderr and "--overwrite" in refused.stderr
    assert (run_dir / "config.yaml").read_bytes() == config  # a refused command records nothing
    assert (run_dir / "stages" / "stage_000" / "selection.json").read_bytes() == selection

    _ok(run_cli(["select", *where, "--ratio", "0.5", "--overwrite"]))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["select"]["ratio"] == 0.5
    history = [json.loads(line) for line in (run_dir / "config.history.jsonl").read_text().splitlines()]
    assert len(history) == 1
    assert history[0]["changes"] == {"select.ratio": {"old": 0.25, "new": 0.5}}
    assert history[0]["previous"] == yaml.safe_load(config)
    assert read_selection(run_dir / "stages" / "stage_000" / "selection.json")["budget"] == 8

    # another scorer: refused without --overwrite; with it, rescored from the stored features
    stage = run_dir / "stages" / "stage_000"
    features = {p: p.stat().st_mtime_ns for p in (stage / "features").rglob("*.npy")}
    refused = run_cli(["select", *where, "--scorer", "centred"])
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "paper" in refused.stderr
    _ok(run_cli(["select", *where, "--scorer", "centred", "--overwrite"]))
    assert {p: p.stat().st_mtime_ns for p in (stage / "features").rglob("*.npy")} == features
    table = read_scores(stage / "scores.parquet")
    assert scorer_spec(table) == {"scorer": "centred", "scorer_options": {}}
    sel = read_selection(stage / "selection.json")
    assert sel["scorer"] == "centred" and sel["budget"] == 8
