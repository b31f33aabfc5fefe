"""metrics.jsonl events are mirrored into TensorBoard scalars."""

from __future__ import annotations

import pytest

from cropi.curriculum.rundir import RunDir
from cropi.curriculum.tensorboard import scalars


def test_scalars_flatten_numeric_leaves_only():
    values = {"step": 5, "stage": 0, "targeted": 0.5, "ok": True, "metric": "greedy",
              "sets": {"targeted/chain": {"n": 50, "greedy": 0.25, "greedy_by_family": {"cs1": 0.25}}}}
    assert dict(scalars(values)) == {"targeted": 0.5, "sets/targeted/chain/n": 50.0,
                                     "sets/targeted/chain/greedy": 0.25,
                                     "sets/targeted/chain/greedy_by_family/cs1": 0.25}


def test_rundir_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rd = RunDir(tmp_path / "run", tensorboard=True)
    rd.log_metrics("eval", stage=0, step=5, targeted=0.25, untargeted=0.5)
    rd.log_metrics("eval", stage=0, step=10, targeted=0.75, untargeted=0.5)
    rd.log_metrics("train_log", stage=0, step=10, loss=-0.125)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/targeted")] == [(5, 0.25), (10, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("train_log/loss")] == [(10, -0.125)]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3


def test_rundir_without_tensorboard_writes_no_events(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.log_metrics("eval", step=1, targeted=0.5)
    assert not (tmp_path / "run" / "tensorboard").exists()
