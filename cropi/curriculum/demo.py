"""The demo job: every phase that exists so far, on the embedded default model and suite."""

from __future__ import annotations

import time
from typing import Any

from cropi.curriculum.phases import Run, phase_rollouts
from cropi.curriculum.scoring import phase_score, phase_select
from cropi.model.loading import resolve_model_path
from cropi.train.evaluate import evaluate
from cropi.utils.io import atomic_write_json, read_json


def phase_eval_beta(run: Run) -> dict[str, Any]:
    path = run.dir.root / "eval_beta.json"
    if path.exists() and not run.overwrite:
        return read_json(path)
    beta = resolve_model_path(run.cfg.model.path)
    result = evaluate(run.policy(beta), run.data.tests, run.cfg.eval)
    atomic_write_json(path, result)
    run.dir.log_metrics("eval", stage=-1, step=0, **{k: v for k, v in result.items() if k != "sets"})
    return result


def run_demo(run: Run) -> dict[str, Any]:
    t0 = time.perf_counter()
    sets = phase_rollouts(run)
    phase_score(run, 0, sets)
    selection = phase_select(run, 0, sets["pool"])
    result = phase_eval_beta(run)
    return {"rollouts": sets, "scores": run.dir.scores(0), "selection": selection, "eval": result,
            "seconds": time.perf_counter() - t0, "run_dir": str(run.dir.root)}
