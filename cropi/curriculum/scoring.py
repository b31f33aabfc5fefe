"""Stage phases that score and select: POPI features -> scores.parquet -> selection.json."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cropi.curriculum.phases import Run
from cropi.data.io import dataset_fingerprint
from cropi.influence.features import FeatureStore
from cropi.influence.pipeline import Timings, add_timings, compute_features, prepare_scoring
from cropi.influence.scores import cosine_scores, fuse, read_scores, score_table, target_mean, write_scores
from cropi.rollout.collect import collect
from cropi.rollout.store import PromptRollouts, load_rollouts
from cropi.utils.errors import CropiError
from cropi.select import (SelectionContext, budget, get_policy, read_selection, selection_stats,
                          write_selection)

log = logging.getLogger(__name__)


FeatureBackend = Callable[[Run, int, dict[str, list[PromptRollouts]]], Timings]
"""Fills complete feature stores at ``run.dir.features(stage, set)`` for every set; returns timings."""

_BACKENDS: dict[str, FeatureBackend] = {}


def register_score_backend(name: str, fn: FeatureBackend) -> None:
    """Make ``score.backend=name`` compute features with ``fn`` (``cropi.scale.ray_score`` registers ``ray``)."""
    if name in _BACKENDS:
        raise ValueError(f"score backend {name!r} is already registered")
    _BACKENDS[name] = fn


def store_spec(run: Run, stage: int, model_path: str, setup_spec: dict[str, Any], name: str) -> dict[str, Any]:
    """What produced a stage's features of one set (the feature store's manifest spec)."""
    return {**run.base_spec(model_path), **setup_spec, "stage": stage, "set": name}


def _local_features(run: Run, stage: int, sets: dict[str, list[PromptRollouts]]) -> Timings:
    """One process: every set through :func:`compute_features` at the stage's weights."""
    cfg = run.cfg
    path = run.model_path(stage)
    policy = run.policy(path)
    setup = prepare_scoring(policy.model, cfg.gradient, cfg.projection)
    timings = Timings()
    for name, items in sets.items():
        store = FeatureStore.open(run.dir.features(stage, name), [it.id for it in items], setup.projector.k,
                                  cfg.projection.store_dtype, store_spec(run, stage, path, setup.spec, name),
                                  overwrite=run.overwrite)
        if not store.is_complete:
            add_timings(timings, compute_features(setup.model, setup.params, setup.projector, items, store,
                                                  cfg.gradient, policy.pad_id, name))
    setup.release()
    return timings


register_score_backend("local", _local_features)


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
    if run.cfg.gradient.mode == "onpolicy":
        sets = _onpolicy_sets(run, stage, sets)
    backend = _BACKENDS.get(run.cfg.score.backend)
    if backend is None:
        raise CropiError(f"score backend {run.cfg.score.backend!r} is not loaded", field="score.backend",
                         fix=f"import cropi.scale.ray_score first (the cropi command does), or use one of {sorted(_BACKENDS)}")
    timings = backend(run, stage, sets)
    stores = {name: FeatureStore.load(run.dir.features(stage, name)) for name in sets}
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
