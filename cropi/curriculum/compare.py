"""`cropi compare`: the same budget, seeds and evaluation schedule for CROPI and the baselines.

Layout: CMP/compare.json, CMP/rollouts/ (beta's rollouts, shared by every arm),
CMP/arms/<arm>/seed_<s>/ (one run directory each), CMP/report/. Seeds are the outer loop so
partial results already cover every arm; each arm run resumes like `cropi run`.

Several processes can work on one comparison (one per seed, say): each arm x seed run has its
writer lock (a second process on it stops, or waits with ``--wait``), while what they share (a
draw's rollouts, its stage-0 features, ``compare.json``) is taken in turn: the first computes, the
others wait, saying for whom, then reuse it.

Arms (:func:`cropi.curriculum.names.get_arm`): ``cropi`` (influence with the configured
``score.scorer``), ``cropi-paper`` (influence with the paper's scorer, ``score.scorer=paper``),
``influence-once`` (stage 0's influence selection at every stage), and every registered selection
policy under its own name: ``full`` (the baseline), ``random``, ``learnability``, ``pass-rate`` and
``oracle`` (the pool prompts of the target sets' own families, docs/acceleration.md#the-oracle-arm).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from cropi.config import RunConfig
from cropi.curriculum.loop import run_curriculum
from cropi.curriculum.names import get_arm
from cropi.curriculum.phases import Run, phase_rollouts
from cropi.curriculum.rundir import LOCK_FILE
from cropi.curriculum.score_phase import phase_score
from cropi.select import policy_fact
from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_write_json, read_json
from cropi.utils.locking import hold, waiting

log = logging.getLogger(__name__)

BASELINE = "full"


def draw_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of seed ``seed``'s own beta draw: rollout seed ``rollout.seed + seed``."""
    return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, seed=cfg.rollout.seed + seed))


def arm_config(cfg: RunConfig, arm: str, seed: int, own_draw: bool = False) -> RunConfig:
    """An arm's config for ``seed``: its policy (and fixed scorer), the seed as training and
    selection seed and, with ``own_draw``, as the offset of the rollout seed (:func:`draw_config`)."""
    spec = get_arm(arm)
    score = cfg.score
    if spec.scorer is not None:
        score = dataclasses.replace(cfg.score, scorer=spec.scorer, scorer_options={})
    return dataclasses.replace(
        draw_config(cfg, seed) if own_draw else cfg, score=score,
        select=dataclasses.replace(cfg.select, policy=spec.policy, seed=seed),
        train=dataclasses.replace(cfg.train, seed=seed),
    )


def redundant_arms(cfg: RunConfig, arms: Sequence[str]) -> dict[str, str]:
    """Arms that would repeat another arm of ``arms`` exactly: ``cropi-paper`` is ``cropi`` when the
    configured scorer already is the paper's (same selections, same training). Maps arm -> twin."""
    out = {}
    for arm in arms:
        spec = get_arm(arm)
        if (spec.scorer is not None and spec.policy == "influence" and "cropi" in arms
                and cfg.score.scorer == spec.scorer and not cfg.score.scorer_options):
            out[arm] = "cropi"
    return out


def write_plan(root: Path, cfg: RunConfig, arms: Sequence[str], seeds: Sequence[int],
               shared_rollouts: bool = False) -> None:
    """Write (or extend: arms and seeds are merged with an existing one) ``root/compare.json``.
    A comparison keeps its rollout layout: one shared draw, or one draw per seed."""
    layout = "shared" if shared_rollouts else "per-seed"
    plan = {"arms": list(arms), "seeds": list(seeds), "baseline": BASELINE,
            "steps": cfg.curriculum.stages * cfg.train.steps_per_stage,
            "stages": cfg.curriculum.stages, "eval_every": cfg.curriculum.eval_every,
            "ratio": cfg.select.ratio, "rollouts": layout}
    path = root / "compare.json"
    if path.exists():
        old = read_json(path)
        if old.get("rollouts", "shared") != layout:
            raise CropiError(f"this comparison uses {old.get('rollouts', 'shared')} rollouts, the command "
                             f"asks for {layout}", file=path,
                             fix="add --shared-rollouts to continue a shared-draw comparison (or drop it), "
                                 "or use another --name")
        plan["arms"] = list(dict.fromkeys([*old.get("arms", []), *arms]))
        plan["seeds"] = sorted(set(old.get("seeds", [])) | set(seeds))
    if layout == "per-seed":
        plan["rollout_seeds"] = {str(s): cfg.rollout.seed + s for s in plan["seeds"]}
    atomic_write_json(path, plan)


def run_compare(cfg: RunConfig, arms: Sequence[str], seeds: Sequence[int],
                overwrite: bool = False, shared_rollouts: bool = False) -> Path:
    """Run every arm x seed (resumable). Returns the comparison root (see `cropi report`).

    Every seed samples its own beta rollouts (``CMP/draws/seed_S/``, rollout seed
    ``rollout.seed + S``), so the seeds replicate the selection too; ``shared_rollouts``: one draw
    for every seed (``CMP/rollouts/``, cheaper; the intervals are then conditional on that draw).
    Stage-0 features are shared between the arms of one draw only."""
    root = cfg.run_dir
    for arm in arms:
        arm_config(cfg, arm, 0)  # validate names before any work
    twins = redundant_arms(cfg, arms)
    for arm, twin in twins.items():
        log.warning("compare: arm %s is skipped, it would repeat %s (score.scorer=%s)", arm, twin,
                    cfg.score.scorer)
    arms = [a for a in arms if a not in twins]
    root.mkdir(parents=True, exist_ok=True)
    with waiting(True), hold(root / LOCK_FILE, what=f"comparison {root}"):
        write_plan(root, cfg, arms, seeds, shared_rollouts)
    if shared_rollouts:
        sample_draw(Run(cfg, overwrite=overwrite, root=root, rollouts_root=root / "rollouts"))
    for seed in seeds:
        rollouts = root / "rollouts" if shared_rollouts else draw_root(root, seed) / "rollouts"
        if not shared_rollouts:  # the seed's own draw, logged in its own metrics.jsonl
            sample_draw(Run(draw_config(cfg, seed), overwrite=overwrite, root=draw_root(root, seed),
                            rollouts_root=rollouts))
        for arm in arms:
            run = Run(arm_config(cfg, arm, seed, own_draw=not shared_rollouts), overwrite=overwrite,
                      root=root / "arms" / arm / f"seed_{seed}", rollouts_root=rollouts)
            log.info("compare: arm %s seed %d -> %s", arm, seed, run.dir.root)
            run.lock()  # another process on this arm and seed: stop (or wait, with --wait)
            if policy_fact(run.cfg.select.policy, "needs_scores") and not overwrite:
                shared_stage0(root, run, None if shared_rollouts else seed)
            run_curriculum(run, once=get_arm(arm).once)
            run.save_config()
    return root


def sample_draw(draw: Run) -> None:
    """Beta's rollouts of one draw, which every arm (and, shared, every seed) uses. Processes of
    the same comparison wait for each other here instead of refusing: the first samples, the
    others then load."""
    try:
        with waiting(True):
            phase_rollouts(draw)
    finally:
        draw.close()


def shared_stage0(root: Path, run: Run, seed: int | None) -> None:
    """Stage 0's scores of an arm that scores, from the draw's stage-0 features: hard-linked from
    another arm (:func:`reuse_stage0_features`), else computed here. One process at a time per
    draw (a lock; the others wait, saying for whom, then link), so the processes of a comparison
    compute them once whatever order they start in."""
    if run.dir.done(0, "scored"):
        return
    draw = "the shared draw" if seed is None else f"seed {seed}'s draw"
    with waiting(True), hold(root / f".stage0-{'shared' if seed is None else seed}.lock",
                             what=f"stage-0 features of {draw} in {root}"):
        reuse_stage0_features(root, run.dir.stage(0) / "features", seed)
        phase_score(run, 0, phase_rollouts(run))


def draw_root(root: Path, seed: int) -> Path:
    """Where seed ``seed``'s own beta draw lives (its rollouts and its ``rollouts`` metrics)."""
    return root / "draws" / f"seed_{seed}"


def reuse_stage0_features(root: Path, dest: Path, seed: int | None = None) -> int:
    """Hard-link stage 0's complete feature stores from another arm (of seed ``seed`` when given,
    else of any seed) into ``dest``.

    Stage 0 is scored at beta on the draw's rollouts with the comparison's one projection seed, so
    its features do not depend on the arm, nor on the seed when the seeds share one draw:
    computing them once per draw is enough. The store still checks its spec when the run opens
    it. Returns the number of sets linked.
    """
    linked = 0
    pattern = f"arms/*/seed_{seed}/stages/stage_000/features" if seed is not None else \
        "arms/*/seed_*/stages/stage_000/features"
    for features in sorted(root.glob(pattern)):
        if features.resolve() == dest.resolve():
            continue
        for manifest in sorted(features.glob("**/manifest.json")):
            target = dest / manifest.parent.relative_to(features)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".linking")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(manifest.parent, tmp, copy_function=os.link)
            tmp.rename(target)  # appears complete or not at all
            linked += 1
    if linked:
        log.info("compare: reused %d stage-0 feature stores in %s", linked, dest)
    return linked
