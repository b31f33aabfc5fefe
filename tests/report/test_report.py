"""build_report on fabricated comparison and run directories (no model, no torch)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cropi.influence.scores import score_table, write_scores
from cropi.report import build_report
from cropi.report.runs import Comparison, RunData, eval_curve, read_metrics, time_breakdown
from cropi.report.summary import time_rows
from cropi.select import SelectionContext, selection_stats, write_selection
from cropi.utils.errors import CropiError

STEPS = list(range(0, 101, 10))
N_POOL = 40


def _ctx(seed: int, scored: bool = True) -> SelectionContext:
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(N_POOL)]
    fused = rng.normal(size=N_POOL) if scored else None
    if fused is not None:
        fused[:3] = np.nan
    return SelectionContext(ids=ids, pass_rate=rng.uniform(0, 1, N_POOL), fused=fused,
                            source=[("arith", "logic")[i % 2] for i in range(N_POOL)],
                            level=[str(i % 3) for i in range(N_POOL)], seed=seed)


def make_run(root: Path, targeted: list[float], seed: int, policy: str = "influence",
             n_select: int = 4, stages: int = 2, scored: bool = True) -> Path:
    """A run directory: evals at STEPS, time events, ``stages`` selections of ``n_select``."""
    lines = []
    for i, (step, acc) in enumerate(zip(STEPS, targeted, strict=True)):
        lines.append({"event": "eval", "stage": i // 5 if step else -1, "step": step,
                      "targeted": acc, "untargeted": 0.3 + 0.001 * step + 0.01 * seed,
                      "metric": "greedy", "sets": {"target_a": {"n": 8, "greedy": acc}},
                      "time": 1.0e9 + step})
        if step:
            lines.append({"event": "train_log", "stage": i // 5, "step": step, "reward": acc,
                          "loss": 0.1})
    lines.append({"event": "rollouts", "seconds": 12.0, "sampled": 40})
    for m in range(stages):
        lines += [{"event": "score", "stage": m, "total_s": 5.0, "grad_s": 3.0, "project_s": 1.0,
                   "store_s": 1.0},
                  {"event": "train", "stage": m, "seconds": 20.0, "eval_seconds": 4.0,
                   "steps": 50},
                  {"event": "eval_time", "stage": m, "seconds": 4.0}]
    root.mkdir(parents=True)
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    previous = None
    for m in range(stages):
        ctx = _ctx(seed + m, scored)
        ids = [ctx.ids[(m + j) % N_POOL] for j in range(n_select)]
        stats = selection_stats(ctx, ids, previous)
        write_selection(root / "stages" / f"stage_{m:03d}" / "selection.json", policy,
                        n_select, ids, stats)
        previous = ids
    return root


def linear(reach: float, top: float = 0.7) -> list[float]:
    return [0.2 + (top - 0.2) * min(s / reach, 1.0) for s in STEPS]


@pytest.fixture()
def comparison(tmp_path: Path) -> Path:
    cmp = tmp_path / "cmp"
    curves = {"cropi": linear(40), "full": linear(100), "random": linear(60, top=0.6)}
    for arm, curve in curves.items():
        for seed in (0, 1):
            make_run(cmp / "arms" / arm / f"seed_{seed}", curve, seed,
                     n_select=N_POOL if arm == "full" else 4,
                     policy={"cropi": "influence"}.get(arm, arm))
    (cmp / "compare.json").write_text(json.dumps(
        {"arms": list(curves), "seeds": [0, 1], "baseline": "full", "steps": 100,
         "eval_every": 10}))
    return cmp


def _row(md: str, arm: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {arm} |"))


def _check_html(html: str) -> None:
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(src|href)=\"https?:", html)
    assert "<link" not in html and "<script" not in html and "<style>" in html


def test_comparison_report(comparison: Path) -> None:
    out = build_report(comparison, method="none")
    assert out == comparison / "report"
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    _check_html(html)
    cropi, full, random = _row(md, "cropi"), _row(md, "full"), _row(md, "random")
    assert "| 40 | 2.50x |" in cropi and "0: 2.50x, 1: 2.50x" in cropi
    assert "| 100 | 1.00x |" in full and f"{N_POOL}/{N_POOL} (100%)" in full
    assert "< 1 (gap 0.100)" in random and f"4/{N_POOL} (10%)" in random
    # final targeted and untargeted accuracy, mean ± sd over seeds
    assert "| 0.700 ± 0.000 | 0.405 ± 0.007 |" in cropi
    # the acceleration table comes before any figure
    assert md.index("| arm |") < md.index("![")
    for name in ("accuracy_targeted.png", "accuracy_untargeted.png", "steps_to_a_star.png",
                 "cropi_seed0_stage_000_composition.png", "cropi_seed0_stage_001_pass_rate.png",
                 "cropi_seed0_stage_000_score.png", "cropi_seed0_overlap.png",
                 "cropi_seed0_time.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in md
    assert html.count("data:image/png;base64,") == md.count("![")
    assert not list(out.glob(".tmp-*"))


def test_default_smoothing_label_matches_acceleration(comparison: Path) -> None:
    from cropi.report import acceleration

    md = (build_report(comparison) / "report.md").read_text()
    expected = acceleration(STEPS, linear(100), STEPS, linear(40))["label"]
    assert f"| {expected} |" in _row(md, "cropi")
    assert "alpha=0.5" in md


def test_single_run_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", linear(50), 0, stages=1, scored=False)
    ctx = _ctx(0, scored=True)  # scores.parquet present although the selection has no scores
    write_scores(run / "stages" / "stage_000" / "scores.parquet",
                 score_table(ctx.ids, {"t": ctx.fused}, ctx.pass_rate, ctx.source, ctx.level))
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"event": "eval", "step": 11')  # a run still writing its last line
    out = build_report(run)
    md = (out / "report.md").read_text()
    _check_html((out / "report.html").read_text())
    row = _row(md, "run")
    assert "| — |" in row and f"4/{N_POOL} (10%)" in row and "0.700" in row
    assert (out / "run_stage_000_score.png").exists()
    assert (out / "run_stage_000_pass_rate.png").exists()
    assert not (out / "steps_to_a_star.png").exists()


def test_report_shows_the_runs_own_settings(tmp_path: Path) -> None:
    from cropi.config import RunConfig, RolloutConfig, dump_config

    run = make_run(tmp_path / "run", linear(50), 0, stages=1)
    cfg = RunConfig(rollout=RolloutConfig(k_pool=5, temperature=0.5))
    (run / "config.yaml").write_text(dump_config(cfg))
    md = (build_report(run) / "report.md").read_text()
    assert "| rollout.k_pool | 5 |" in md and "| rollout.temperature | 0.5 |" in md


def test_metrics_readers(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", linear(50), 0, stages=2)
    records = read_metrics(run / "metrics.jsonl")
    steps, values = eval_curve(records + [{"event": "eval", "step": 100, "targeted": 0.5}],
                               "targeted")
    assert steps.tolist() == STEPS and values[-1] == 0.5  # a re-evaluated step: last one wins
    times = time_breakdown(records)
    assert list(times) == ["setup", "stage 0", "stage 1"]
    assert times["setup"]["rollouts"] == 12.0
    assert times["stage 1"] == {"rollouts": 0.0, "scoring": 5.0, "training": 20.0,
                                "evaluation": 4.0}


def _timed_records(legacy: bool) -> list[dict]:
    """Rollouts 12 s, beta eval 3 s; per stage: scoring 5 s, 20 s of training steps and two
    evaluations of 2 s during training. ``legacy``: the train event of older runs, whose
    seconds included those evaluations (and had no eval_seconds)."""
    recs: list[dict] = [{"event": "rollouts", "seconds": 12.0},
                        {"event": "eval_time", "stage": -1, "seconds": 3.0}]
    for m in range(2):
        train = ({"event": "train", "stage": m, "seconds": 24.0, "steps": 50} if legacy else
                 {"event": "train", "stage": m, "seconds": 20.0, "eval_seconds": 4.0, "steps": 50})
        recs += [{"event": "score", "stage": m, "total_s": 5.0},
                 {"event": "eval_time", "stage": m, "seconds": 2.0},
                 {"event": "eval_time", "stage": m, "seconds": 2.0}, train]
    return recs


@pytest.mark.parametrize("legacy", [False, True])
def test_time_breakdown_does_not_count_evaluation_twice(legacy: bool) -> None:
    records = _timed_records(legacy)
    times = time_breakdown(records)
    assert times["beta"]["evaluation"] == 3.0
    for m in range(2):
        assert times[f"stage {m}"] == {"rollouts": 0.0, "scoring": 5.0, "training": 20.0,
                                       "evaluation": 4.0}
    run = RunData(Path("run"), "cropi", 0, records)
    headers, rows = time_rows(Comparison(Path("."), {"cropi": [run]}, None, {}))
    assert headers == ["arm", "rollouts", "scoring", "training", "evaluation", "total"]
    spent = 12.0 + 3.0 + 2 * (5.0 + 20.0 + 4.0)  # each second once
    assert rows == [["cropi", "12.0", "10.0", "40.0", "11.0", f"{spent:.1f}"]]


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(CropiError, match="neither a run directory"):
        build_report(tmp_path)
    with pytest.raises(ValueError):
        build_report(tmp_path, method="median")


def test_report_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, cropi.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
