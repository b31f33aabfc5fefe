"""Ray-sharded POPI scoring (``score.backend: ray``).

The pool and every target set are split by contiguous id range (``shard_ids``) into N shards; one
Ray task per shard loads the stage's model once, fills its shard store of every set and returns.
The driver merges the shard stores into the stage's feature stores, byte-identical to the
single-process path, and then scores as usual.

A shard store is resumable, so a task whose worker dies is retried by Ray (``MAX_RETRIES``) and
continues where its store stopped; the other shards are not touched. A driver that dies resumes
the same way when rerun with the same number of workers. Workers read nothing from disk but the
model; they write their shard stores under ``RUN/stages/stage_NNN/shards/`` (on a cluster, the
run directory must be on a filesystem every node sees). The backend is registered (lazily, by
name) in :data:`cropi.curriculum.names.SCORE_BACKENDS`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropi.config import RunConfig, ScoreConfig
from cropi.curriculum.phases import Run
from cropi.curriculum.score_phase import store_spec
from cropi.influence.features import FeatureStore
from cropi.influence.shards import merge_stores, shard_ids
from cropi.influence.pipeline import Timings, add_timings, compute_features, prepare_scoring
from cropi.rollout.store import PromptRollouts
from cropi.utils.errors import CropiError
from cropi.utils.progress import track

log = logging.getLogger(__name__)

MAX_RETRIES = 3


@dataclass(frozen=True)
class ShardTask:
    """One worker's share: its id range of every set, at one stage's weights."""

    index: int
    n_shards: int
    cfg: RunConfig
    root: str
    rollouts_root: str
    stage: int
    model_path: str
    items: dict[str, list[PromptRollouts]]
    out: str
    after_set: Callable[[ShardTask, int, int], None] | None = None
    """Test seam: called as ``after_set(task, j, attempt)`` after the task's j-th set (1-based)."""


def score_shard(task: ShardTask) -> dict[str, Any]:
    """Worker body: fill (or resume) the shard store of every set. Runs inside a Ray task."""
    import torch

    torch.set_num_threads(max(1, int(task.cfg.score.worker_cpus)))
    out = Path(task.out)
    attempt = _log_attempt(out)
    run = Run(task.cfg, root=Path(task.root), rollouts_root=Path(task.rollouts_root))
    policy = run.policy(task.model_path)
    setup = prepare_scoring(policy.model, task.cfg.gradient, task.cfg.projection)
    timings, specs = Timings(), {}
    for j, (name, items) in enumerate(task.items.items(), start=1):
        specs[name] = store_spec(run, task.stage, task.model_path, setup.spec, name)
        store = FeatureStore.open(out / name, [it.id for it in items], setup.projector.k,
                                  task.cfg.projection.store_dtype, specs[name])
        if not store.is_complete:
            add_timings(timings, compute_features(setup.model, setup.params, setup.projector, items, store,
                                                  setup.gradient, policy.pad_id,
                                                  f"{name} [shard {task.index}]"))
        if task.after_set is not None:
            task.after_set(task, j, attempt)
    setup.release()
    return {"index": task.index, "attempt": attempt, "timings": timings, "specs": specs}


def _log_attempt(out: Path) -> int:
    """Append this attempt to OUT/attempts.jsonl; returns its number (1 = first)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "attempts.jsonl"
    n = sum(1 for _ in path.open()) + 1 if path.exists() else 1
    with path.open("a") as f:
        f.write(json.dumps({"attempt": n, "pid": os.getpid(), "time": time.time()}) + "\n")
    return n


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CropiError("score.backend=ray needs Ray, which is not installed", field="score.backend",
                         fix="pip install 'cropi[ray]' (or ray>=2.9), or use score.backend=local") from None
    return ray


def init_ray(cfg: ScoreConfig) -> Any:
    """Connect to ``cfg.ray_address`` (or RAY_ADDRESS), or start a local cluster."""
    ray = import_ray()
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE",) if k in os.environ}
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env} if env else None)
    return ray


def plan_workers(cfg: ScoreConfig, resources: dict[str, float], n_items: int) -> tuple[int, float]:
    """(number of shards, GPUs per worker) from the config and the cluster's resources."""
    gpus = cfg.worker_gpus if cfg.worker_gpus is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
    n = cfg.workers
    if n == 0:
        n = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 1) // cfg.worker_cpus)
    return max(1, min(n, max(1, n_items))), gpus


def ray_features(run: Run, stage: int, sets: dict[str, list[PromptRollouts]],
                 after_set: Callable[[ShardTask, int, int], None] | None = None) -> Timings:
    """The ``ray`` score backend: shard, compute on workers, merge into the stage's stores
    (``after_set``: the test seam of :class:`ShardTask`)."""
    todo = {n: items for n, items in sets.items()
            if run.overwrite or not (run.dir.features(stage, n) / "manifest.json").exists()}
    if not todo:
        return Timings()
    cfg = run.cfg
    ray = init_ray(cfg.score)
    n, gpus = plan_workers(cfg.score, ray.cluster_resources(), len(todo.get("pool", next(iter(todo.values())))))
    folder = run.dir.stage(stage) / "shards" / f"{n}_workers"
    if run.overwrite:
        shutil.rmtree(folder, ignore_errors=True)  # shards of an earlier spec; retries then resume
    model_path = run.model_path(stage)
    remote = ray.remote(num_cpus=cfg.score.worker_cpus, num_gpus=gpus, max_retries=MAX_RETRIES)(score_shard)
    t0 = time.perf_counter()
    refs = [remote.remote(ShardTask(
        i, n, cfg, str(run.dir.root), str(run.dir.rollouts_root), stage, model_path,
        {name: _shard(items, n, i) for name, items in todo.items()}, str(folder / f"shard_{i:04d}"),
        after_set))
        for i in range(n)]
    results = []
    with track(f"score on {n} ray workers", total=n) as bar:
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            results.append(_get(ray, ready[0]))
            bar.advance(1)
    wall = time.perf_counter() - t0
    timings = Timings()
    for res in sorted(results, key=lambda r: r["index"]):
        add_timings(timings, res["timings"])
        run.dir.log_metrics("score_shard", stage=stage, shard=res["index"], workers=n,
                            attempts=res["attempt"], **res["timings"].as_dict())
    for name, items in todo.items():
        merge_stores([folder / f"shard_{i:04d}" / name for i in range(n)], run.dir.features(stage, name),
                     [it.id for it in items], results[0]["specs"][name], overwrite=run.overwrite)
    run.dir.log_metrics("score_ray", stage=stage, workers=n, gpus_per_worker=gpus, wall_s=wall)
    shutil.rmtree(run.dir.stage(stage) / "shards", ignore_errors=True)
    return timings


def _shard(items: list[PromptRollouts], n: int, i: int) -> list[PromptRollouts]:
    by_id = {it.id: it for it in items}
    return [by_id[pid] for pid in shard_ids([it.id for it in items], n, i)]


def _get(ray: Any, ref: Any) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), CropiError) else None
        if cause is not None:
            raise cause from None
        raise

