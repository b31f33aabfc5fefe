"""Stage phases that score and select: POPI features -> scores.parquet -> selection.json."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import numpy as np

from cropi.curriculum.phases import Run
from cropi.data.io import dataset_fingerprint
from cropi.influence.features import FeatureStore
from cropi.influence.params import ParamSet, attach_lora, select_params
from cropi.influence.pipeline import Timings, compute_features
from cropi.influence.projection import Projector, make_projector
from cropi.influence.scores import cosine_scores, fuse, read_scores, score_table, target_mean, write_scores
from cropi.rollout.collect import collect
from cropi.rollout.store import PromptRollouts, load_rollouts
from cropi.select import (SelectionContext, budget, get_policy, read_selection, selection_stats,
                          write_selection)

log = logging.getLogger(__name__)


def build_projector(run: Run, model: Any, params: ParamSet) -> Projector:
    cfg = run.cfg.projection
    if cfg.kind == "factorized":
        from cropi.influence.projection_factorized import FactorizedProjector

        return FactorizedProjector.from_model(model, cfg, params=list(zip(params.names, params.params)))
    return make_projector(cfg, params.dim)


def _onpolicy_sets(run: Run, stage: int, sets: dict[str, list[PromptRollouts]]) -> dict[str, list[PromptRollouts]]:
    """Fresh samples from the current model (gradient.mode=onpolicy, for ablations)."""
    path = run.model_path(stage)
    records = {"pool": run.data.pool, **{f"targets/{n}": r for n, r in run.data.targets.items()}}
    out = {}
    for name, items in sets.items():
        folder = run.dir.stage(stage) / "onpolicy" / name
        k = len(items[0].response_ids) if items else run.cfg.rollout.k_pool
        cfg = dataclasses.replace(run.cfg.rollout, seed=run.cfg.rollout.seed + 1000 * (stage + 1))
        spec = {**run.base_spec(path), "dataset": dataset_fingerprint(records[name])}
        collect(records[name], folder, lambda: run.policy(path), k, cfg, spec, name=name)
        out[name] = load_rollouts(folder)
    return out


def phase_score(run: Run, stage: int, sets: dict[str, list[PromptRollouts]]) -> Timings | None:
    """Project POPI gradients of the pool and the targets at the stage's weights; write scores."""
    if run.dir.done(stage, "scored") and not run.overwrite:
        return None
    cfg = run.cfg
    path = run.model_path(stage)
    if cfg.gradient.mode == "onpolicy":
        sets = _onpolicy_sets(run, stage, sets)
    policy = run.policy(path)
    model = policy.model
    if cfg.gradient.params == "lora":
        model = attach_lora(copy.deepcopy(model), cfg.gradient.lora_rank)
    params = select_params(model, cfg.gradient)
    projector = build_projector(run, model, params)
    spec = {**run.base_spec(path), "projection": projector.spec(), "params": params.spec(),
            "gradient": dataclasses.asdict(cfg.gradient), "stage": stage}
    timings = Timings()
    stores = {}
    for name, items in sets.items():
        store = FeatureStore.open(run.dir.features(stage, name), [it.id for it in items], projector.k,
                                  cfg.projection.store_dtype, {**spec, "set": name}, overwrite=run.overwrite)
        if not store.is_complete:
            t = compute_features(model, params, projector, items, store, cfg.gradient, policy.pad_id, name)
            for f in ("grad", "project", "store", "n_prompts", "n_zero"):
                setattr(timings, f, getattr(timings, f) + getattr(t, f))
        stores[name] = FeatureStore.load(run.dir.features(stage, name))
    params.zero_grad()
    for p in model.parameters():
        p.requires_grad_(True)
    _write_stage_scores(run, stage, sets["pool"], stores)
    run.dir.mark(stage, "scored", **timings.as_dict())
    run.dir.log_metrics("score", stage=stage, **timings.as_dict())
    return timings


def _write_stage_scores(run: Run, stage: int, pool: list[PromptRollouts], stores: dict[str, FeatureStore]) -> None:
    ids, feats, zero = stores["pool"].read()
    means = {}
    for name, store in stores.items():
        if name == "pool":
            continue
        t_ids, t_feats, t_zero = store.read()
        label = name.removeprefix("targets/")
        means[label], _ = target_mean(t_feats, t_zero, t_ids, run.cfg.score.target_max,
                                      run.cfg.score.seed, name=label)
    scores = cosine_scores(feats, means, zero)
    n_sel = budget(len(ids), run.cfg.select.ratio)
    fused = fuse(scores, n_sel, run.cfg.score.fusion)
    table = score_table(ids, scores, fused, [it.pass_rate for it in pool], [it.source for it in pool],
                        [it.level for it in pool])
    write_scores(run.dir.scores(stage), table)


def selection_context(run: Run, stage: int, pool: list[PromptRollouts], with_scores: bool) -> SelectionContext:
    fused = None
    if with_scores:
        table = read_scores(run.dir.scores(stage))
        by_id = dict(zip(table.column("id").to_pylist(), table.column("fused").to_numpy(zero_copy_only=False)))
        fused = np.asarray([by_id[it.id] for it in pool], dtype=np.float64)
    return SelectionContext(ids=[it.id for it in pool], pass_rate=[it.pass_rate for it in pool],
                            fused=fused, source=[it.source for it in pool],
                            level=[it.level for it in pool], seed=run.cfg.select.seed + stage)


def phase_select(run: Run, stage: int, pool: list[PromptRollouts], policy: str | None = None) -> dict[str, Any]:
    """Select the stage's subset with ``policy`` (default: the config's) and write selection.json."""
    path = run.dir.selection(stage)
    if run.dir.done(stage, "selected") and not run.overwrite:
        return read_selection(path)
    name = policy or run.cfg.select.policy
    t0 = time.perf_counter()
    ctx = selection_context(run, stage, pool, with_scores=run.dir.scores(stage).exists())
    n = budget(len(pool), run.cfg.select.ratio)
    ids = get_policy(name).select(ctx, n)
    prev = read_selection(run.dir.selection(stage - 1))["ids"] if stage > 0 and run.dir.selection(stage - 1).exists() else None
    stats = selection_stats(ctx, ids, prev)
    write_selection(path, name, n, ids, stats)
    run.dir.mark(stage, "selected", policy=name, n=len(ids), seconds=time.perf_counter() - t0)
    return read_selection(path)


def load_run_rollouts(run: Run) -> dict[str, list[PromptRollouts]]:
    out = {"pool": load_rollouts(run.dir.rollouts("pool"))}
    for n in run.data.targets:
        out[f"targets/{n}"] = load_rollouts(run.dir.rollouts(f"targets/{n}"))
    return out
