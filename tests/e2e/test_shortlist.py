"""score.shortlist: stage 1 re-scores only the previous stage's best and the lowest-ESS prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from conftest import run_cli


def test_stage_one_scores_a_shortlist(tiny_model_dir, parity_sets, tmp_path: Path) -> None:
    s = parity_sets
    res = run_cli(["run", "--model", str(tiny_model_dir), "--pool", str(s["pool"]), "--target", f"a={s['target']}",
                   "--out-dir", str(tmp_path), "--name", "r", "--stages", "2", "--steps-per-stage", "1",
                   "--ratio", "0.25", "--set", "score.shortlist=1", "--set", "rollout.k_pool=4",
                   "--set", "rollout.k_target=4", "--set", "rollout.batch_size=8", "--set", "rollout.max_new_tokens=8",
                   "--set", "train.max_new_tokens=8", "--set", "train.prompts_per_step=2",
                   "--set", "train.samples_per_prompt=2", "--set", "projection.k=64"])
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "r"
    first = pq.read_table(run / "stages/stage_000/scores.parquet").to_pydict()
    second = pq.read_table(run / "stages/stage_001/scores.parquet").to_pydict()
    assert "shortlisted" not in first and len(second["id"]) == 16  # every pool prompt has a row
    short = np.asarray(second["shortlisted"]) == 1.0
    budget = 4  # 0.25 x 16
    best = np.argsort([-x if x == x else np.inf for x in first["score_a"]], kind="stable")[:budget]
    assert short[best].all()  # stage 0's best are re-scored (one target: the fused order is its order)
    assert budget < short.sum() <= 2 * budget
    assert np.isnan(np.asarray(second["score_a"])[~short]).all()
    picks = json.loads((run / "stages/stage_001/selection.json").read_text())["ids"]
    assert set(picks) <= {i for i, k in zip(second["id"], short) if k}
    scored = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"event": "score"' in line]
    assert scored[1]["work"]["tokens_backward"] < scored[0]["work"]["tokens_backward"]
