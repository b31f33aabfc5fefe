"""The report's 'What the selection picks' section: a table and a figure per stage, and the
difficulty across stages, from selection.json's analysis (no model, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cropi.report import build_report
from cropi.report.runs import load_run
from cropi.report.selection_analysis import analysis_rows, trend_rows
from cropi.select import SelectionContext, selection_stats, write_selection
from cropi.select.analysis import PromptMeasures

N = 60


def make_run(root: Path, analysis: bool = True) -> Path:
    """Two stages; stage 1 picks harder prompts (level d3, lower pass rates) than stage 0."""
    rng = np.random.default_rng(0)
    p = np.tile([0.125, 0.25, 0.5, 0.75, 0.0, 1.0], N // 6)
    levels = [f"d{1 + i % 3}" for i in range(N)]
    ctx = SelectionContext(ids=[f"p{i:03d}" for i in range(N)], pass_rate=p, fused=None,
                           source=["a"] * N, level=levels, seed=0)
    grad = [i for i in range(N) if 0 < p[i] < 1]
    lines = [{"event": "eval", "stage": -1, "step": 0, "targeted": 0.2, "untargeted": 0.2,
              "metric": "greedy", "sets": {}, "time": 1.0e9}]
    root.mkdir(parents=True)
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for stage, wanted in ((0, "d1"), (1, "d3")):
        m = PromptMeasures()
        m.add("entropy_beta", rng.random(N))
        m.add("similarity_embedding/t", rng.random(N))
        if stage:
            m.add("pass_rate_current", np.clip(p + 0.2, 0, 1))
        ids = [ctx.ids[i] for i in grad if levels[i] == wanted][:6]
        stats = selection_stats(ctx, ids, measures=m if analysis else None)
        write_selection(root / "stages" / f"stage_{stage:03d}" / "selection.json", "influence", 6, ids, stats)
    return root


def test_rows_and_trend(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path / "r"))
    sel = json.loads((tmp_path / "r" / "stages" / "stage_001" / "selection.json").read_text())
    rows = analysis_rows(sel["stats"]["analysis"])
    names = [r[0] for r in rows]
    assert names == ["pass_rate_beta", "pass_rate_current", "level", "entropy_beta", "similarity_embedding/t"]
    level = rows[names.index("level")]
    assert level[1].startswith("3.000 [3.000, 3.000]") and level[2] == "1.750" and "p = " in level[3]
    trend = trend_rows(run)
    assert [r[0] for r in trend] == ["0", "1"]
    assert trend[0][5].startswith("1.000 / 1.750") and trend[1][5].startswith("3.000 / 1.750")
    assert trend[0][4] == "-" and trend[1][4] != "-"  # the current pass rate: stage 1 only


def test_report_has_a_table_and_a_figure_per_stage(tmp_path: Path) -> None:
    root = make_run(tmp_path / "r")
    out = build_report(root, n_boot=0)
    md = (out / "report.md").read_text()
    assert "## What the selection picks" in md and "### Difficulty across stages" in md
    for stage in (0, 1):
        assert f"### Stage {stage}: influence" in md
        assert any(p.name.endswith(f"stage_{stage:03d}_analysis.png") for p in out.iterdir())
    assert "similarity_embedding/t" in md and "random picks (95 %)" in md
    assert "| 1 | influence | 6 |" in md  # the trend row of stage 1
    assert "stage 1: what the selection picks" in (out / "report.html").read_text()


def test_no_section_without_analysis(tmp_path: Path) -> None:
    out = build_report(make_run(tmp_path / "r", analysis=False), n_boot=0)
    assert "What the selection picks" not in (out / "report.md").read_text()
