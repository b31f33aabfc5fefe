"""The scale-out commands end to end on a tiny model: `cropi score --backend ray --workers 2`
(which starts a local Ray cluster) scores the pool on two workers, `cropi select` picks the
subset, and `cropi export-verl` writes it as verl parquet that our verl reader loads back.
(Equality of the Ray and single-process features is tests/scale/test_ray_score.py.)"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from cropi.data.io import load_prompts
from cropi.select import read_selection

pytest.importorskip("ray")


def _data(sets, out) -> list[str]:
    return ["--pool", str(sets["pool"]), "--target", f"a={sets['target']}", "--out-dir", str(out),
            "--name", "r"]


def test_score_ray_select_export_verl(tiny_model_dir, parity_sets, tmp_path):
    res = run_cli(["score", "--model", str(tiny_model_dir), *_data(parity_sets, tmp_path),
                   "--backend", "ray", "--workers", "2", "--k", "64",
                   "--set", "rollout.k_pool=4", "--set", "rollout.k_target=4",
                   "--set", "rollout.batch_size=16", "--set", "rollout.max_new_tokens=8"])
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "r"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    shards = [e for e in events if e["event"] == "score_shard"]
    assert sorted(e["shard"] for e in shards) == [0, 1]
    assert sum(e["n_prompts"] for e in shards) == 16 + 6  # pool + target, each split over 2 workers
    assert pq.read_table(run / "stages/stage_000/scores.parquet").num_rows == 16

    res = run_cli(["select", *_data(parity_sets, tmp_path), "--ratio", "0.25"])
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(["export-verl", str(run), "--out", str(tmp_path / "stage0.parquet")])
    assert res.returncode == 0, res.stderr[-2000:]
    ids = read_selection(run / "stages/stage_000/selection.json")["ids"]
    assert len(ids) == 4
    assert [r.id for r in load_prompts(tmp_path / "stage0.parquet")] == ids

    res = run_cli(["export-verl", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.parquet")])
    assert res.returncode == 2 and "error" in res.stderr and not (tmp_path / "x.parquet").exists()
