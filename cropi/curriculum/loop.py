"""The CROPI curriculum (docs/concepts.md#the-curriculum), read top to bottom like the recipe:

    rollouts of beta (once)
    for stage m: score at theta_m -> select -> GRPO on the subset (eval every E steps) -> theta_m+1

Every phase is skipped when its output exists, so `cropi run` resumes after kill -9 anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from cropi.curriculum.phases import Run, phase_rollouts
from cropi.curriculum.score_phase import phase_score
from cropi.curriculum.select_phase import phase_select
from cropi.data.io import dataset_fingerprint
from cropi.data.schema import PromptRecord
from cropi.rollout.collect import make_policy
from cropi.rollout.store import PromptRollouts
from cropi.select import policy_fact, read_selection, write_selection
from cropi.evaluation import evaluate, is_targeted, write_item_results
from cropi.utils.errors import CropiError
from cropi.utils.hashing import fingerprint
from cropi.utils.io import atomic_write_json, read_json
from cropi.utils.work import Work

log = logging.getLogger(__name__)

def eval_and_log(run: Run, model: Any, tokenizer: Any, stage: int, step: int,
                 share: Path | None = None, targeted_only: bool = False) -> dict[str, Any]:
    """Evaluate a live model on the test sets (``targeted_only``: the targeted ones) and append an
    ``eval`` event to metrics.jsonl.

    ``make_policy`` switches the model to eval mode (it samples from it when the rollout dtype is
    fp32); the model's train/eval mode is restored afterwards. With ``share``, the result and the
    per-item rows are also written there for other runs to reuse (:func:`phase_eval_initial`).
    """
    tests = {n: v for n, v in run.data.tests.items() if is_targeted(n) or not targeted_only}
    if not tests:
        return {}
    t0 = time.perf_counter()
    was_training = model.training
    try:
        policy = make_policy(model, tokenizer, run.cfg.rollout, run.cfg.model.system_prompt)
        result = evaluate(policy, tests, run.cfg.eval, with_items=True)
    finally:
        model.train(was_training)
    items = result.pop("items", None)
    if share is not None:
        atomic_write_json(share, {"result": result, "items": items})
    _log_eval(run, stage, step, result, items, seconds=time.perf_counter() - t0)
    return result


def _log_eval(run: Run, stage: int, step: int, result: dict[str, Any], items: list | None,
              seconds: float, **extra: Any) -> None:
    if items:  # before the eval event: an event never lacks its per-item file
        write_item_results(run.dir.root / "evals" / f"step_{step:06d}.parquet", items)
    run.dir.log_metrics("eval", stage=stage, step=step, **result)
    run.dir.log_metrics("eval_time", stage=stage, seconds=seconds, **extra)


POLICY_ROLLOUT_KEYS = ("backend", "dtype", "gpu_memory_utilization")
"""The rollout settings that build the evaluated policy (the sampling seed and K do not)."""


def beta_eval_path(run: Run) -> Path:
    """Where beta's step-0 evaluation is kept next to beta's rollouts (shared by every arm and seed
    of a comparison), keyed by everything the result depends on: beta's weights and system
    prompt, the test sets, the eval config (its sampling seed is not the run's seed), the rollout
    settings that build the policy and the device (so every seed's own beta draw shares it)."""
    key = fingerprint({**run.base_spec(run.model_path(0)), "device": run.device,
                       "eval": dataclasses.asdict(run.cfg.eval),
                       "rollout": {k: getattr(run.cfg.rollout, k) for k in POLICY_ROLLOUT_KEYS},
                       "tests": {n: dataset_fingerprint(r) for n, r in run.data.tests.items()}})
    return run.dir.rollouts("beta_eval") / f"{key}.json"


def phase_eval_initial(run: Run) -> None:
    """Step-0 evaluation of beta (once per run). Without test sets, say once that every
    evaluation of the run is skipped."""
    if not run.data.tests:
        log.warning("no test sets (a pool of your own without --test): evaluation is skipped; "
                    "give --test NAME=FILE to measure accuracy")
        return
    if run.dir.done(0, "evaluated_beta"):
        return
    share = beta_eval_path(run)
    if share.exists() and not run.overwrite:  # another arm or seed of the comparison evaluated beta
        stored = read_json(share)
        _log_eval(run, -1, 0, stored["result"], stored["items"], seconds=0.0, reused=str(share))
        log.info("step-0 evaluation of beta reused from %s", share)
    else:
        policy = run.policy(run.model_path(0))
        eval_and_log(run, policy.model, policy.tokenizer, stage=-1, step=0, share=share)
    run.dir.mark(0, "evaluated_beta")


def phase_train(run: Run, stage: int, ids: list[str]) -> None:
    """GRPO on the stage's subset from theta_stage; checkpoint theta_stage+1."""
    if run.dir.done(stage, "trained") and not run.overwrite:
        return
    from cropi.train.grpo import train_stage

    by_id: dict[str, PromptRecord] = {r.id: r for r in run.data.pool}
    unknown = [(n, i) for n, i in enumerate(ids) if i not in by_id]
    if unknown:
        n, i = unknown[0]
        raise CropiError(f"ids[{n}] = {i!r} is not in the pool ({len(unknown)} of {len(ids)} ids "
                         "are not)", file=run.dir.selection(stage), field="ids",
                         fix="the pool changed since this selection: select again with --overwrite, "
                             "or give the pool it was made from")
    records = [by_id[i] for i in ids]
    tcfg = run.cfg.train
    offset = stage * tcfg.steps_per_stage
    run.release_policies()  # free the scoring model before training
    # the lock before train_stage's staging folder: taking it first in a process removes the
    # temporaries a killed writer left, and a lock first taken by a write during training would
    # remove that live folder too (a run opened without a write of its own, e.g. through the API)
    run.lock()

    def on_eval(model: Any, tokenizer: Any, step: int) -> None:
        stage_end = step >= offset + tcfg.steps_per_stage
        eval_and_log(run, model, tokenizer, stage, step,
                     targeted_only=run.cfg.eval.untargeted == "stage_end" and not stage_end)

    logs: list[dict[str, Any]] = []

    def on_log(rec: dict[str, Any]) -> None:
        logs.append(rec)
        run.dir.log_metrics("train_log", stage=stage, **rec)

    prev = run.dir.checkpoint(stage - 1) if stage > 0 else None
    res = train_stage(run.model_path(stage), run.dir.checkpoint(stage), records, tcfg,
                      system_prompt=run.cfg.model.system_prompt, step_offset=offset,
                      init_optimizer=prev, on_eval=on_eval, eval_every=run.cfg.curriculum.eval_every,
                      log_fn=on_log, device=run.cfg.model.device)
    # seconds: training alone; the evaluations inside it are eval_seconds (and eval_time events)
    run.dir.log_metrics("train", stage=stage, seconds=res.seconds, eval_seconds=res.eval_seconds,
                        steps=res.steps, work=grpo_work(logs, tcfg).as_dict())
    run.dir.mark(stage, "trained", steps=res.steps, seconds=res.seconds,
                 eval_seconds=res.eval_seconds)
    if stage > 0 and not run.cfg.curriculum.keep_checkpoints:
        shutil.rmtree(run.dir.checkpoint(stage - 1), ignore_errors=True)


def grpo_work(logs: list[dict[str, Any]], tcfg: Any) -> Work:
    """Counted work of a GRPO stage from TRL's step logs: ``completions/mean_length`` x the
    completions each step samples, and TRL's ``num_tokens`` (prompt + completion tokens through the
    training forward and backward, counted from 0 in each stage's trainer)."""
    steps = [r for r in logs if "num_tokens" in r]
    if not steps:
        return Work()
    per_step = tcfg.prompts_per_step * tcfg.samples_per_prompt
    generated = sum(float(r.get("completions/mean_length", 0.0)) * per_step for r in steps)
    return Work(prompts=tcfg.prompts_per_step * len(steps), responses=per_step * len(steps),
                tokens_generated=round(generated), tokens_backward=round(float(steps[-1]["num_tokens"])))


def phase_stage_selection(run: Run, stage: int, sets: dict[str, list[PromptRollouts]],
                          once: bool = False) -> list[str]:
    """Score (when the policy needs it) and select; ``once``: stage 0's subset at every later
    stage, without re-scoring (the ``influence-once`` arm)."""
    policy = run.cfg.select.policy
    if once and stage > 0:
        if not run.dir.done(stage, "selected"):
            first = read_selection(run.dir.selection(0))
            label = f"{policy}-once"
            write_selection(run.dir.selection(stage), label, first["budget"], first["ids"], first["stats"])
            run.dir.mark(stage, "selected", policy=label, n=len(first["ids"]))
        return read_selection(run.dir.selection(stage))["ids"]
    if policy_fact(policy, "needs_scores"):
        phase_score(run, stage, sets)
    return phase_select(run, stage, sets["pool"])["ids"]


def run_curriculum(run: Run, once: bool = False) -> dict[str, Any]:
    """All stages of one run (one arm, one seed); ``once``: stage 0's selection at every stage.
    Returns a small summary."""
    t0 = time.perf_counter()
    sets = phase_rollouts(run)
    phase_eval_initial(run)
    for stage in range(run.cfg.curriculum.stages):
        ids = phase_stage_selection(run, stage, sets, once)
        phase_train(run, stage, ids)
        run.dir.mark(stage, "evaluated")
    return {"run_dir": str(run.dir.root), "seconds": time.perf_counter() - t0,
            "final_model": str(run.dir.checkpoint(run.cfg.curriculum.stages - 1))}
