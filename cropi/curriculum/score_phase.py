"""The score phase of a stage: POPI features of the pool and the targets -> scores.parquet."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cropi.curriculum.names import SCORE_BACKENDS
from cropi.curriculum.phases import Run
from cropi.data.io import dataset_fingerprint
from cropi.influence.drift import Drift, drift_summary, drift_tokens, pool_ess
from cropi.influence.features import DamagedRows, FeatureStore
from cropi.influence.pipeline import Timings, add_timings, compute_features, prepare_scoring
from cropi.influence.scorers import score as run_scorer
from cropi.influence.scores import (read_scores, score_table, scorer_spec, store_cosine_scores, store_target_mean,
                                   target_scores, write_scores)
from cropi.rollout.collect import collect
from cropi.rollout.store import PromptRollouts, load_rollouts
from cropi.select import budget, rank_order
from cropi.utils.errors import CropiError
from cropi.utils.work import Work

log = logging.getLogger(__name__)

FeatureBackend = Callable[[Run, int, dict[str, list[PromptRollouts]]], Timings]
"""Fills complete feature stores at ``run.dir.features(stage, set)`` for every set; returns timings."""


def register_score_backend(name: str, fn: FeatureBackend) -> None:
    """Make ``score.backend=name`` compute features with ``fn``
    (:data:`cropi.curriculum.names.SCORE_BACKENDS`)."""
    SCORE_BACKENDS.register(name, fn)


def store_spec(run: Run, stage: int, model_path: str, setup_spec: dict[str, Any], name: str) -> dict[str, Any]:
    """What produced a stage's features of one set (the feature store's manifest spec)."""
    spec = {**run.base_spec(model_path), **setup_spec, "stage": stage, "set": name}
    if stage > 0 and name == "pool" and run.cfg.score.resample_below_ess is not None:
        spec["resample_below_ess"] = run.cfg.score.resample_below_ess
    if stage > 0 and name == "pool" and run.cfg.score.shortlist is not None:
        spec["shortlist"] = run.cfg.score.shortlist
    return spec


def local_features(run: Run, stage: int, sets: dict[str, list[PromptRollouts]],
                   drift: Drift | None = None) -> Timings:
    """One process: every set through :func:`compute_features` at the stage's weights. ``drift``:
    record the pool prompts' drift measures from the gradient pass (those it scores now)."""
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
                                                  setup.gradient, policy.pad_id, name,
                                                  drift=drift if name == "pool" else None))
    setup.release()
    return timings



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


def current_scorer(run: Run) -> dict[str, Any]:
    """The scorer spec a stage's scores are made with (stored in scores.parquet)."""
    return {"scorer": run.cfg.score.scorer, "scorer_options": dict(run.cfg.score.scorer_options)}


def _rescore_only(run: Run, stage: int, sets: dict[str, list[PromptRollouts]]) -> bool:
    """True when the stage is scored with another scorer and its stored features are complete;
    another scorer without ``--overwrite`` is refused."""
    if not (run.dir.done(stage, "scored") and run.dir.scores(stage).exists()):
        return False
    stored = scorer_spec(read_scores(run.dir.scores(stage)))
    if stored == current_scorer(run):
        return False
    if not run.overwrite:
        raise CropiError(f"stage {stage} was scored with {stored}, this command asks for {current_scorer(run)}",
                         file=run.dir.scores(stage),
                         fix="rerun with --overwrite to rescore from the stored features (no new gradients)")
    return all((run.dir.features(stage, name) / "manifest.json").exists() for name in sets)


def rescore(run: Run, stage: int, sets: dict[str, list[PromptRollouts]]) -> bool:
    """Rewrite a scored stage's scores with the configured scorer from its stored features when it
    was scored with another one (needs ``--overwrite``); True when it did."""
    if not _rescore_only(run, stage, sets):
        return False
    stores = {name: FeatureStore.load(run.dir.features(stage, name)) for name in sets}
    old = read_scores(run.dir.scores(stage))
    extra = None
    if "ess" in old.column_names:  # the drift measured when the stage was scored stays
        by_id = dict(zip(old.column("id").to_pylist(), old.column("ess").to_pylist()))
        extra = {"ess": np.array([by_id.get(it.id, np.nan) for it in sets["pool"]], dtype=np.float64)}
    _write_stage_scores(run, stage, sets["pool"], stores, extra)
    run.dir.log_metrics("rescore", stage=stage, **current_scorer(run))
    return True


def phase_score(run: Run, stage: int, sets: dict[str, list[PromptRollouts]]) -> Timings | None:
    """Project POPI gradients of the pool and the targets at the stage's weights; write scores.

    A stage already scored is skipped; one scored with another scorer is refused, or with
    ``--overwrite`` rescored from its stored features (the scorer needs no new gradients)."""
    if rescore(run, stage, sets):
        return Timings()
    if run.dir.done(stage, "scored") and not run.overwrite:
        return None
    extra: dict[str, np.ndarray] = {}
    fused = fuses_drift(run, stage)
    if run.cfg.gradient.mode == "onpolicy":
        sets = _onpolicy_sets(run, stage, sets)
    elif stage > 0 and (run.cfg.score.drift or run.cfg.score.resample_below_ess is not None) and not fused:
        extra["ess"], sets = _drift(run, stage, sets)
    pool = sets["pool"]
    if stage > 0 and run.cfg.score.shortlist is not None:
        sets = {**sets, "pool": shortlist(run, stage, pool, extra.get("ess"))}
    if fused:
        measured: Drift = {}
        timings = local_features(run, stage, sets, drift=measured)
        extra["ess"], _ = _drift(run, stage, sets, measured)
    else:
        timings = SCORE_BACKENDS.get(run.cfg.score.backend, field="score.backend")(run, stage, sets)
    stores = {name: FeatureStore.load(run.dir.features(stage, name)) for name in sets}
    _write_stage_scores(run, stage, pool, stores, extra)
    run.dir.mark(stage, "scored", **timings.as_dict())
    run.dir.log_metrics("score", stage=stage, **timings.as_dict())
    return timings


def fuses_drift(run: Run, stage: int) -> bool:
    """Whether the stage's drift measures come from the pool's gradient pass instead of a forward
    pass of their own: stages > 0 with ``score.drift``, scored by the local backend from beta's
    responses, when nothing needs the drift before scoring (no ``score.resample_below_ess``, no
    ``score.shortlist``)."""
    score = run.cfg.score
    return (stage > 0 and score.drift and score.resample_below_ess is None and score.shortlist is None
            and score.backend == "local" and run.cfg.gradient.mode != "onpolicy")


def _drift(run: Run, stage: int, sets: dict[str, list[PromptRollouts]], measured: Drift | None = None
           ) -> tuple[np.ndarray, dict[str, list[PromptRollouts]]]:
    """ESS/K of every pool prompt's stored responses at the stage's weights (logged as a ``drift``
    event); with ``score.resample_below_ess``, the prompts below it get fresh rollouts from the
    stage's model (seeded, under ``stage_NNN/resampled/pool``) that replace beta's for scoring.

    ``measured``: the measures the gradient pass already recorded (:func:`fuses_drift`; a resumed
    stage's stored prompts included); a forward pass runs only for the pool prompts with a
    gradient it did not measure (scored several per backward)."""
    t0 = time.perf_counter()
    pool = sets["pool"]
    measured = measured or {}
    concat = run.cfg.gradient.concat_responses
    path = run.model_path(stage)
    policy = run.policy(path)  # the scoring pass's model when fused: cached
    ess_k, per_prompt = pool_ess(policy.model, pool, policy.pad_id, run.cfg.gradient.max_batch_tokens,
                                 details=True, concat=concat, known=measured)
    todo = [it for it in pool if it.id not in measured]
    threshold = run.cfg.score.resample_below_ess
    summary = drift_summary(ess_k, 0.5 if threshold is None else threshold)
    low = [it.id for it, e in zip(pool, ess_k) if threshold is not None and np.isfinite(e) and e < threshold]
    forward = sum(drift_tokens(it, concat) for it in todo if not it.zero_grad)  # prompts with a gradient
    run.dir.log_metrics("drift", stage=stage, **summary, resampled=len(low), seconds=time.perf_counter() - t0,
                        from_gradient_pass=len(measured),
                        work=Work(prompts=sum(not it.zero_grad for it in todo), tokens_forward=forward).as_dict())
    log.info("stage %d drift: mean ESS/K %s, %s of %d prompts below %s", stage, summary["mean_ess"],
             summary["share_below"], summary["n"], summary["threshold"])
    from cropi.utils.io import atomic_path  # the stage policy's NLL and pass rate on beta's responses

    def save(resampled: dict[str, PromptRollouts]) -> None:  # stage_NNN/drift.npz, for the selection analysis
        with atomic_path(run.dir.stage(stage) / "drift.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array([it.id for it in pool]), ess=ess_k, **per_prompt,
                     pass_rate_resampled=np.array([resampled[it.id].pass_rate if it.id in resampled
                                                   else np.nan for it in pool], dtype=np.float64))

    if not low:
        save({})
        return ess_k, sets
    wanted = set(low)
    records = [r for r in run.data.pool if r.id in wanted]
    folder = run.dir.stage(stage) / "resampled" / "pool"
    cfg = dataclasses.replace(run.cfg.rollout, seed=run.cfg.rollout.seed + 1000 * (stage + 1))
    spec = {**run.base_spec(path), "dataset": dataset_fingerprint(records), "resample_below_ess": threshold}
    collect(records, folder, lambda: run.policy(path), run.cfg.rollout.k_pool, cfg, spec,
            name="resampled pool", overwrite=run.overwrite)
    fresh = {it.id: it for it in load_rollouts(folder)}
    save(fresh)
    return ess_k, {**sets, "pool": [fresh.get(it.id, it) for it in pool]}


def _write_stage_scores(run: Run, stage: int, pool: list[PromptRollouts], stores: dict[str, FeatureStore],
                        extra: dict[str, np.ndarray] | None = None) -> None:
    """The stage's score table from its feature stores, read chunk by chunk: the target means, then
    the pool's scores (the paper scorer streams the pool too, so memory does not grow with the pool;
    the other scorers get the whole pool matrix). A stored row that no longer matches its checksum
    is marked to be computed again, with one line saying so."""
    try:
        _score_stores(run, stage, pool, stores, extra)
    except DamagedRows as exc:
        store = next(s for s in stores.values() if s.path == exc.path)
        FeatureStore.open(store.path, store.ids, store.k, store.dtype, store.spec)  # marks them pending
        run.dir.clear(stage, "scored")
        raise CropiError(f"{exc.rows.size} of {store.n} stored feature rows do not match their checksums "
                         "(damaged); they are marked to be computed again", file=store.path,
                         fix="rerun the same command: it computes those rows and scores the stage") from None


def _score_stores(run: Run, stage: int, pool: list[PromptRollouts], stores: dict[str, FeatureStore],
                  extra: dict[str, np.ndarray] | None) -> None:
    pool_store = stores["pool"]
    ids = list(pool_store.ids)
    means, rows = {}, {}
    for name, store in stores.items():
        if name == "pool":
            continue
        label = name.removeprefix("targets/")
        means[label], _, rows[label] = store_target_mean(store, run.cfg.score.target_max, run.cfg.score.seed,
                                                         name=label)
    by_id = {it.id: it for it in pool}
    items = [by_id[i] for i in ids]
    if run.cfg.score.scorer == "paper" and not run.cfg.score.scorer_options:
        scores = store_cosine_scores(pool_store, means)
    else:
        _, feats, zero = pool_store.read()
        scores = run_scorer(run.cfg.score.scorer, feats, zero, means, target_feats=rows,
                            n_correct=np.array([int(np.sum(it.rewards > 0)) for it in items]),
                            n_responses=np.array([len(it.rewards) for it in items]),
                            sources=[it.source for it in items], **run.cfg.score.scorer_options)
        del feats
    extra = dict(extra or {})
    if len(ids) < len(pool):  # a shortlist was scored: the other prompts get no score (NaN) this stage
        pos = {pid: n for n, pid in enumerate(ids)}
        where = np.array([pos.get(it.id, -1) for it in pool])
        scores = {t: np.where(where >= 0, v[np.maximum(where, 0)], np.nan) for t, v in scores.items()}
        extra["shortlisted"] = (where >= 0).astype(np.float64)
        items = pool
    table = score_table([it.id for it in items], scores, [it.pass_rate for it in items],
                        [it.source for it in items], [it.level for it in items], spec=current_scorer(run),
                        extra=extra)
    write_scores(run.dir.scores(stage), table)
    run.dir.refresh_record(stage, "scored")  # a rescore rewrote the table of a scored stage


def shortlist(run: Run, stage: int, pool: list[PromptRollouts], ess: np.ndarray | None) -> list[PromptRollouts]:
    """The pool prompts re-scored at ``stage`` > 0 with ``score.shortlist = m``: the previous
    stage's best ``ceil(m x budget)`` by its fused score, and as many again of the others with a
    gradient whose ESS/K dropped lowest (their stored responses say least about the current
    policy, so their score may have moved most). Pool order is kept."""
    m = run.cfg.score.shortlist
    assert m is not None and stage > 0
    ids = [it.id for it in pool]
    n = budget(len(pool), run.cfg.select.ratio)
    size = math.ceil(m * n)
    prev = target_scores(read_scores(run.dir.scores(stage - 1)), ids)
    keep = {int(i) for i in rank_order(prev, n, run.cfg.score.fusion)[:size]}
    if ess is not None:
        others = [i for i in np.argsort(ess, kind="stable") if np.isfinite(ess[i]) and int(i) not in keep]
        keep |= {int(i) for i in others[:size]}
    log.info("stage %d: re-scoring a shortlist of %d of %d pool prompts", stage, len(keep), len(pool))
    return [it for i, it in enumerate(pool) if i in keep]
