"""score.backend=ray on a local Ray cluster with 2 CPU workers equals the single-process path,
also when a worker dies mid-shard (only that shard is redone)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from parity_cli import write_parity_sets  # noqa: E402  (registers the test-only parity verifier)

import cropi.scale.ray_score as ray_score  # noqa: E402
from cropi.scale.ray_score import ray_features  # noqa: E402
from cropi.api import make_config  # noqa: E402
from cropi.curriculum.names import SCORE_BACKENDS  # noqa: E402
from cropi.curriculum.phases import Run, phase_rollouts  # noqa: E402
from cropi.curriculum.score_phase import phase_score  # noqa: E402
from cropi.influence.features import FeatureStore  # noqa: E402
from cropi.influence.scores import read_scores  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    return write_parity_sets(tmp_path_factory.mktemp("data"), n_pool=12, n_target=5)


def _run(model: Path, sets: dict[str, Path], out: Path, backend: str, k: int = 64,
         overwrite: bool = False) -> Run:
    cfg = make_config(name=backend, out_dir=str(out), model={"path": str(model)},
                      data={"suite": None, "pool": str(sets["pool"]),
                            "targets": {"a": str(sets["target"]), "b": str(sets["pool"])}},
                      sets={"rollout.k_pool": 4, "rollout.k_target": 4, "rollout.batch_size": 16,
                            "rollout.max_new_tokens": 8, "projection.k": k, "score.backend": backend,
                            "score.workers": 2})
    return Run(cfg, overwrite=overwrite, root=out / backend, rollouts_root=out / "rollouts")


def _features(run: Run, stage: int = 0) -> dict[str, tuple]:
    out = {}
    for name in ("pool", "targets/a", "targets/b"):
        ids, feats, zero = FeatureStore.load(run.dir.features(stage, name)).read()
        out[name] = (list(ids), np.array(feats), np.array(zero))
    return out


def _assert_same(a: Run, b: Run) -> None:
    fa, fb = _features(a), _features(b)
    for name in fa:
        assert fa[name][0] == fb[name][0], name
        assert np.array_equal(fa[name][1], fb[name][1]), name  # byte-identical features
        assert np.array_equal(fa[name][2], fb[name][2]), name
    ta, tb = read_scores(a.dir.scores(0)), read_scores(b.dir.scores(0))
    for col in ta.column_names:
        ca = ta.column(col).to_numpy(zero_copy_only=False)
        cb = tb.column(col).to_numpy(zero_copy_only=False)
        assert np.array_equal(ca, cb, equal_nan=True) if ca.dtype.kind == "f" else list(ca) == list(cb), col


def _events(run: Run, event: str) -> list[dict]:
    lines = (run.dir.root / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_ray_scores_equal_single_process(tiny_model_dir, sets, tmp_path, local_ray):
    local = _run(tiny_model_dir, sets, tmp_path, "local")
    phase_score(local, 0, phase_rollouts(local))
    sharded = _run(tiny_model_dir, sets, tmp_path, "ray")
    phase_score(sharded, 0, phase_rollouts(sharded))
    _assert_same(local, sharded)
    shards = _events(sharded, "score_shard")
    assert sorted(s["shard"] for s in shards) == [0, 1]
    assert sum(s["n_prompts"] for s in shards) == 12 + 5 + 12
    assert not (sharded.dir.stage(0) / "shards").exists()  # shard stores removed after the merge


def _kill_shard_1_after_pool(task, j: int, attempt: int) -> None:
    if (task.index, j, attempt) == (1, 1, 1):
        os._exit(17)


def test_killed_worker_redoes_only_its_shard(tiny_model_dir, sets, tmp_path, local_ray, monkeypatch):
    local = _run(tiny_model_dir, sets, tmp_path, "local")
    phase_score(local, 0, phase_rollouts(local))
    # shard 1's worker dies after its first set (pool), on its first attempt only
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook travels to the workers
    kill = functools.partial(ray_features, after_set=_kill_shard_1_after_pool)
    monkeypatch.setattr(SCORE_BACKENDS, "_entries", {**SCORE_BACKENDS._entries, "ray": kill})
    sharded = _run(tiny_model_dir, sets, tmp_path, "ray")
    phase_score(sharded, 0, phase_rollouts(sharded))
    _assert_same(local, sharded)
    attempts = {s["shard"]: s["attempts"] for s in _events(sharded, "score_shard")}
    assert attempts == {0: 1, 1: 2}
    # the retry resumed shard 1: its pool rows were not computed again
    n_by_shard = {s["shard"]: s["n_prompts"] for s in _events(sharded, "score_shard")}
    assert n_by_shard[1] == 2 + 6  # its halves of targets a (5 prompts) and b (12), not the pool again


def test_overwrite_recomputes_with_the_new_spec(tiny_model_dir, sets, tmp_path, local_ray):
    first = _run(tiny_model_dir, sets, tmp_path, "ray", k=32)
    phase_score(first, 0, phase_rollouts(first))
    local = _run(tiny_model_dir, sets, tmp_path, "local")
    phase_score(local, 0, phase_rollouts(local))
    again = _run(tiny_model_dir, sets, tmp_path, "ray", overwrite=True)  # k 32 -> 64
    phase_score(again, 0, phase_rollouts(again))
    _assert_same(local, again)


def test_plan_workers():
    cfg = make_config(sets={"score.backend": "ray"}).score
    assert ray_score.plan_workers(cfg, {"CPU": 4.0}, 100) == (4, 0.0)
    assert ray_score.plan_workers(cfg, {"CPU": 64.0, "GPU": 8.0}, 100) == (8, 1.0)
    assert ray_score.plan_workers(cfg, {"CPU": 4.0}, 3) == (3, 0.0)
    half = make_config(sets={"score.backend": "ray", "score.worker_gpus": 0.5, "score.workers": 0}).score
    assert ray_score.plan_workers(half, {"GPU": 2.0}, 100) == (4, 0.5)
