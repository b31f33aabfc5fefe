"""Two `cropi` commands on one run started together (issue 23's acceptance): no traceback, one
finishes, the other stops with one line naming the owner (exit 2) or, with --wait, waits and then
finishes; the run keeps no stale files and equals a clean run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen

from reliability_helpers import files_under, rollout_args, run_cli, same_table, score_args, start_cli, wait_for

from cropi.utils.io import read_json

STALE = (".tmp-", ".cropi.lock", "parts", ".linking", ".stage0-")
TINY = ["--stages", "1", "--steps-per-stage", "1", "--eval-every", "1", "--ratio", "0.25",
        "--set", "rollout.k_pool=4", "--set", "rollout.k_target=4", "--set", "rollout.batch_size=8", "--set", "rollout.chunk_rows=8",
        "--set", "rollout.max_new_tokens=8", "--set", "train.max_new_tokens=8",
        "--set", "train.prompts_per_step=2", "--set", "train.samples_per_prompt=2", "--set", "projection.k=64"]
"""A one-stage, one-step run of the tiny model (``cropi run`` / ``cropi compare`` options)."""


@contextmanager
def _held(args: list[str], tmp_path: Path) -> Iterator[Popen]:
    """Start ``cropi args`` (log ``first.log``) and yield it once it is inside its work, held there
    by the test gate; the gate opens when the block ends, however it ends."""
    gate, inside = tmp_path / "gate", tmp_path / "inside"
    first = start_cli(args, tmp_path / "first.log", CROPI_TEST_GATE=str(gate), CROPI_TEST_INSIDE=str(inside))
    try:
        wait_for(inside.exists, first)
        yield first
    finally:
        gate.touch()


def _no_stale(root: Path) -> None:
    bad = [f for f in files_under(root) if any(s in f for s in STALE)]
    assert not bad, bad


def _one_line_owner(res, owner_pid: int) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert f"in use by pid {owner_pid}" in lines[0] and "--wait" in lines[0]


def test_two_rollouts_on_one_run(tiny_model_dir: Path, gated_sets: dict[str, Path], tmp_path: Path) -> None:
    args = rollout_args(tiny_model_dir, gated_sets, tmp_path / "runs")
    clean = start_cli(rollout_args(tiny_model_dir, gated_sets, tmp_path / "clean"), tmp_path / "clean.log")
    with _held(args, tmp_path) as first:  # the first holds the run, in the middle of its rollouts
        _one_line_owner(run_cli(args), first.pid)
        waiter = start_cli([*args, "--wait"], tmp_path / "waiter.log")
        wait_for(lambda: "waiting for run" in (tmp_path / "waiter.log").read_text(), waiter)
        assert f"pid {first.pid}" in (tmp_path / "waiter.log").read_text()
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    assert waiter.wait(timeout=600) == 0, (tmp_path / "waiter.log").read_text()
    assert clean.wait(timeout=600) == 0, (tmp_path / "clean.log").read_text()
    assert "Traceback" not in (tmp_path / "waiter.log").read_text()
    run, ref = tmp_path / "runs" / "x", tmp_path / "clean" / "x"
    _no_stale(run)
    for sub in ("pool", "targets/a"):
        a, b = run / "rollouts" / sub, ref / "rollouts" / sub
        assert (a / "rollouts.parquet").read_bytes() == (b / "rollouts.parquet").read_bytes()
        assert read_json(a / "manifest.json") == read_json(b / "manifest.json")
    # the waiter sampled nothing: one rollouts event, the first command's
    assert (run / "metrics.jsonl").read_text().count('"event": "rollouts"') == 1


def test_two_scores_on_one_run(tiny_model_dir: Path, gated_sets: dict[str, Path], tmp_path: Path) -> None:
    args = score_args(tiny_model_dir, gated_sets, tmp_path / "runs")
    clean = start_cli(score_args(tiny_model_dir, gated_sets, tmp_path / "clean"), tmp_path / "clean.log")
    with _held(args, tmp_path) as first:
        _one_line_owner(run_cli(args), first.pid)
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    assert clean.wait(timeout=600) == 0, (tmp_path / "clean.log").read_text()
    again = run_cli(args)  # the refused command, rerun: the stage is scored, nothing recomputed
    assert again.returncode == 0, again.stderr
    run, ref = tmp_path / "runs" / "x", tmp_path / "clean" / "x"
    _no_stale(run)
    score = "stages/stage_000/scores.parquet"
    assert same_table(run / score, ref / score)
    for store in ("pool", "targets/a"):
        feats = f"stages/stage_000/features/{store}/features.npy"
        assert (run / feats).read_bytes() == (ref / feats).read_bytes()
    assert (run / "metrics.jsonl").read_text().count('"event": "score"') == 1


def test_two_seed_processes_share_one_comparison(tiny_model_dir: Path, gated_sets: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """The one-process-per-seed layout: the shared draw is sampled once (the other process waits
    and says for whom), stage 0's features are computed once and linked, whatever the start order."""
    def args(seed: int) -> list[str]:
        return ["compare", "--model", str(tiny_model_dir), "--pool", str(gated_sets["pool"]),
                "--target", f"a={gated_sets['target']}", "--out-dir", str(tmp_path / "runs"), "--name", "c",
                "--arms", "cropi", "--seeds", str(seed), "--shared-rollouts", *TINY]

    with _held(args(0), tmp_path) as first:
        second = start_cli(args(1), tmp_path / "second.log")
        wait_for(lambda: "waiting for" in (tmp_path / "second.log").read_text(), second)
    assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()
    root = tmp_path / "runs" / "c"
    _no_stale(root)
    assert read_json(root / "compare.json")["seeds"] == [0, 1]
    assert (root / "metrics.jsonl").read_text().count('"event": "rollouts"') == 1  # one draw, sampled once
    feats = [root / "arms" / "cropi" / f"seed_{s}" / "stages/stage_000/features/pool/features.npy" for s in (0, 1)]
    assert feats[0].stat().st_ino == feats[1].stat().st_ino  # computed once, linked into the other


def test_two_runs_on_one_run(tiny_model_dir: Path, gated_sets: dict[str, Path], tmp_path: Path) -> None:
    """`cropi run` twice on one run: the second stops before any work, naming the first."""
    args = ["run", "--model", str(tiny_model_dir), "--pool", str(gated_sets["pool"]),
            "--target", f"a={gated_sets['target']}", "--out-dir", str(tmp_path / "runs"), "--name", "x", *TINY]
    with _held(args, tmp_path) as first:
        _one_line_owner(run_cli(args), first.pid)
    assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()
    run = tmp_path / "runs" / "x"
    _no_stale(run)
    assert read_json(run / "stages/stage_000/state.json").keys() >= {"scored", "selected", "trained", "evaluated"}
    assert (run / "metrics.jsonl").read_text().count('"event": "train"') == 1
