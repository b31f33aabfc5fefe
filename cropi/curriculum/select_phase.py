"""The select phase of a stage: a registered selection policy over the pool -> selection.json."""

from __future__ import annotations

import time
from typing import Any

from cropi.curriculum.phases import Run
from cropi.curriculum.score_phase import current_scorer
from cropi.influence.scores import read_scores, target_scores
from cropi.rollout.store import PromptRollouts
from cropi.select import (SelectionContext, budget, get_policy, policy_fact, read_selection,
                          selection_stats, write_selection)
from cropi.utils.errors import CropiError


def selection_context(run: Run, stage: int, pool: list[PromptRollouts], with_scores: bool) -> SelectionContext:
    """What the selection policies see; ``with_scores``: the stage's per-target scores, fused with
    ``score.fusion`` for the budget of the selection being made."""
    ids = [it.id for it in pool]
    scores = target_scores(read_scores(run.dir.scores(stage)), ids) if with_scores else None
    return SelectionContext(ids=ids, pass_rate=[it.pass_rate for it in pool], fused=None,
                            source=[it.source for it in pool], level=[it.level for it in pool],
                            seed=run.cfg.select.seed + stage, scores=scores, fusion=run.cfg.score.fusion,
                            target_sources=target_sources(run))


def target_sources(run: Run) -> list[str]:
    """The families (``source``) of the run's target-set prompts, sorted (the oracle's relevant set)."""
    return sorted({str(r.source) for recs in run.data.targets.values() for r in recs})


def selection_spec(run: Run, policy: str, n_pool: int) -> dict[str, Any]:
    """What makes a selection: policy, budget, ratio, seed (and fusion for influence)."""
    cfg = run.cfg.select
    spec: dict[str, Any] = {"policy": policy, "budget": budget(n_pool, cfg.ratio), "ratio": cfg.ratio}
    if policy_fact(policy, "seeded"):
        spec["seed"] = cfg.seed
    if policy_fact(policy, "needs_target_sources"):
        spec["target_sources"] = target_sources(run)
    if policy_fact(policy, "needs_scores"):
        spec["fusion"] = run.cfg.score.fusion
        spec.update(current_scorer(run))
    return spec


def _check_stored_selection(run: Run, stage: int, stored: dict[str, Any], spec: dict[str, Any]) -> None:
    """Refuse to reuse a stored selection that was made differently from ``spec``."""
    diff = [f"{k}: {stored[k]!r} -> {v!r}" for k, v in spec.items() if k in stored and stored[k] != v]
    if diff:
        raise CropiError(f"stage {stage} already has a selection made differently ({'; '.join(diff)})",
                     file=run.dir.selection(stage),
                     fix="rerun with --overwrite to replace it, or use another --name")


def phase_select(run: Run, stage: int, pool: list[PromptRollouts], policy: str | None = None) -> dict[str, Any]:
    """Select the stage's subset with ``policy`` (default: the config's) and write selection.json.

    A stored selection is reused when it was made with the same policy, budget and fusion; a
    different request is refused (``--overwrite`` recomputes).
    """
    run.check_stage(stage)
    path = run.dir.selection(stage)
    name = policy or run.cfg.select.policy
    spec = selection_spec(run, name, len(pool))
    if run.dir.done(stage, "selected") and path.exists() and not run.overwrite:
        stored = read_selection(path)
        _check_stored_selection(run, stage, stored, spec)
        return stored
    scored = run.dir.scores(stage).exists()
    if policy_fact(name, "needs_scores") and not scored:
        raise CropiError(f"does not exist: the {name} policy selects by the stage's scores",
                         file=run.dir.scores(stage),
                         fix=f"run `cropi score --stage {stage}` first, or choose another --policy")
    t0 = time.perf_counter()
    ctx = selection_context(run, stage, pool, with_scores=scored)
    n = spec["budget"]
    ids = get_policy(name).select(ctx, n)
    prev = read_selection(run.dir.selection(stage - 1))["ids"] if stage > 0 and run.dir.selection(stage - 1).exists() else None
    stats = selection_stats(ctx, ids, prev)
    write_selection(path, name, n, ids, stats, **{k: v for k, v in spec.items() if k not in ("policy", "budget")})
    run.dir.mark(stage, "selected", policy=name, n=len(ids), seconds=time.perf_counter() - t0)
    return read_selection(path)
