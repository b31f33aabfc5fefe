"""`cropi run` on a tiny random model, killed with kill -9 in each phase and resumed, ends with
the same selections and scores as an uninterrupted run; `cropi compare` builds the acceleration
table."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
from conftest import popen_cli, run_cli

from cropi.select import read_selection


def _args(model: Path, sets: dict[str, Path], out: Path) -> list[str]:
    return ["run", "--model", str(model), "--pool", str(sets["pool"]), "--target", f"a={sets['target']}",
            "--test", f"targeted/a={sets['test_t']}", "--test", f"untargeted/b={sets['test_u']}",
            "--out-dir", str(out), "--name", "r", "--stages", "2", "--steps-per-stage", "2",
            "--eval-every", "2", "--ratio", "0.25",
            "--set", "rollout.k_pool=4", "--set", "rollout.k_target=4", "--set", "rollout.batch_size=4", "--set", "rollout.chunk_rows=4",
            "--set", "rollout.max_new_tokens=8", "--set", "train.max_new_tokens=8",
            "--set", "train.prompts_per_step=2", "--set", "train.samples_per_prompt=2",
            "--set", "projection.k=64", "--set", "eval.samples=0", "--set", "eval.max_new_tokens=8"]


def _assert_tables_equal(pa_path: Path, pb_path: Path) -> None:
    """Bit-identical columns; NaN (zero-gradient rows) equals NaN."""
    import numpy as np

    ta, tb = pq.read_table(pa_path), pq.read_table(pb_path)
    assert ta.schema == tb.schema
    for name in ta.column_names:
        ca, cb = ta.column(name).to_numpy(zero_copy_only=False), tb.column(name).to_numpy(zero_copy_only=False)
        if ca.dtype.kind == "f":
            assert np.array_equal(ca, cb, equal_nan=True), name
        else:
            assert list(ca) == list(cb), name


def _kill_when(args: list[str], cond: Callable[[], bool], timeout: float = 240) -> None:
    proc = popen_cli(args)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not cond():
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _done_rows(store: Path) -> int:
    import numpy as np

    path = store / "done.npy"
    return int(np.load(path, mmap_mode="r").sum()) if path.exists() else 0


def _metric_events(root: Path, event: str) -> list[dict]:
    path = root / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == event:
            out.append(rec)
    return out


def test_run_kill9_in_each_phase_resumes_to_identical_selections(tiny_model_dir, parity_sets, tmp_path):
    ref = run_cli(_args(tiny_model_dir, parity_sets, tmp_path / "a"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    a, b = tmp_path / "a" / "r", tmp_path / "b" / "r"
    args = _args(tiny_model_dir, parity_sets, tmp_path / "b")
    # 1. during the rollouts
    _kill_when(args, lambda: len(list((b / "rollouts/pool/parts").glob("part-*.parquet"))) >= 2)
    # 2. during the scoring of stage 0
    _kill_when(args, lambda: _done_rows(b / "stages/stage_000/features/pool") >= 2)
    # 3. during the training of stage 0
    _kill_when(args, lambda: any(e.get("stage") == 0 for e in _metric_events(b, "train_log")))
    # 4. during the scoring of stage 1
    _kill_when(args, lambda: _done_rows(b / "stages/stage_001/features/pool") >= 1)
    done = run_cli(args)
    assert done.returncode == 0, done.stderr[-2000:]
    for m in (0, 1):
        sa, sb = a / f"stages/stage_{m:03d}", b / f"stages/stage_{m:03d}"
        assert read_selection(sa / "selection.json")["ids"] == read_selection(sb / "selection.json")["ids"]
        _assert_tables_equal(sa / "scores.parquet", sb / "scores.parquet")
    assert (b / "report" / "report.html").exists()


def test_compare_two_arms_builds_acceleration_table(tiny_model_dir, parity_sets, tmp_path):
    args = _args(tiny_model_dir, parity_sets, tmp_path)
    args[0] = "compare"
    res = run_cli(args + ["--arms", "cropi,full", "--seeds", "0"])
    assert res.returncode == 0, res.stderr[-2000:]
    root = tmp_path / "r"
    draw = root / "draws" / "seed_0"
    assert (draw / "rollouts" / "pool" / "manifest.json").exists()  # the seed's draw, shared by the arms
    assert not (root / "arms" / "full" / "seed_0" / "rollouts").exists()
    # beta is evaluated once per comparison: the second arm reuses the first one's step-0 evaluation
    cropi_run, full_run = root / "arms/cropi/seed_0", root / "arms/full/seed_0"
    beta_evals = [[{k: v for k, v in e.items() if k != "time"} for e in _metric_events(r, "eval")
                   if e["step"] == 0] for r in (cropi_run, full_run)]
    assert len(beta_evals[0]) == 1 and beta_evals[0] == beta_evals[1]
    times = [[e for e in _metric_events(r, "eval_time") if e["stage"] == -1] for r in (cropi_run, full_run)]
    assert "reused" not in times[0][0] and times[1][0]["reused"].startswith(str(draw / "rollouts"))
    assert pq.read_table(cropi_run / "evals/step_000000.parquet").equals(
        pq.read_table(full_run / "evals/step_000000.parquet"))
    full = read_selection(root / "arms/full/seed_0/stages/stage_000/selection.json")
    assert full["n_selected"] == 16
    # the table `cropi compare` wrote shows the numbers of the arms' own metrics.jsonl
    report = (root / "report" / "report.md").read_text()
    assert _row(report, "cropi") == _expected_row(root, "cropi", "4/16 (25%)")
    assert _row(report, "full") == _expected_row(root, "full", "16/16 (100%)")
    # known curves on this run directory (eval steps 0, 2, 4), the report's numbers by hand:
    # EMA (alpha 0.5) of full 0.5, 0.25, 0.75 -> 0.5, 0.375, 0.5625: a* = 0.5625 first at step 4;
    # cropi 0.25, 1.0, 0.5 -> 0.25, 0.625, 0.5625: reaches a* at step 2, acceleration 4 / 2;
    # final accuracies are the raw last evaluations (cropi 0.5, not its best 1.0)
    _set_targeted(root / "arms/full/seed_0", {0: 0.5, 2: 0.25, 4: 0.75})
    _set_targeted(root / "arms/cropi/seed_0", {0: 0.25, 2: 1.0, 4: 0.5})
    from cropi.report import build_report

    known = (build_report(root, tmp_path / "known") / "report.md").read_text()
    untargeted = {arm: _eval_curve(root / f"arms/{arm}/seed_0", "untargeted")[1][-1] for arm in ("cropi", "full")}
    assert _row(known, "cropi") == f"| cropi | 0 | 0.500 | {untargeted['cropi']:.3f} | 2 | 2.00x | — | 4/16 (25%) |"
    assert _row(known, "full") == f"| full | 0 | 0.750 | {untargeted['full']:.3f} | 4 | 1.00x | — | 16/16 (100%) |"
    assert "a* = 0.5625" in known


def _row(md: str, arm: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {arm} |"))


def _eval_curve(run_root: Path, key: str) -> tuple[list[int], list[float]]:
    by_step = {rec["step"]: rec[key] for rec in _metric_events(run_root, "eval")}  # last one wins
    return sorted(by_step), [by_step[s] for s in sorted(by_step)]


def _ema(values: list[float], alpha: float = 0.5) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else alpha * v + (1 - alpha) * out[-1])
    return out


def _expected_row(root: Path, arm: str, data: str) -> str:
    """The acceleration table's row of a one-seed arm, recomputed from metrics.jsonl: a* = the
    baseline's (full) final EMA-smoothed targeted accuracy; first step whose smoothed accuracy
    reaches it; the ratio of the two; final raw accuracies."""
    b_steps, b_vals = _eval_curve(root / "arms/full/seed_0", "targeted")
    steps, vals = _eval_curve(root / f"arms/{arm}/seed_0", "targeted")
    a_star = _ema(b_vals)[-1]

    def reach(st: list[int], v: list[float]) -> int | None:
        return next((s for s, x in zip(st, _ema(v)) if x >= a_star - 1e-12), None)

    s_base, s_arm = reach(b_steps, b_vals), reach(steps, vals)
    if s_arm is None:
        step, label = "—", f"< 1 (gap {a_star - max(_ema(vals)):.3f})"
    else:
        step, label = str(s_arm), "reached at step 0" if s_arm == 0 else f"{s_base / s_arm:.2f}x"
    untargeted = _eval_curve(root / f"arms/{arm}/seed_0", "untargeted")[1][-1]
    return f"| {arm} | 0 | {vals[-1]:.3f} | {untargeted:.3f} | {step} | {label} | — | {data} |"


def _set_targeted(run_root: Path, values: dict[int, float]) -> None:
    """Rewrite the targeted accuracy of every eval event of a run (by step)."""
    lines = []
    for line in (run_root / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "eval":
            rec["targeted"] = values[rec["step"]]
        lines.append(json.dumps(rec))
    (run_root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
