"""The curriculum loop's train and eval phases, wired to stubs (no GRPO step, no generation)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cropi.config import CurriculumConfig, EvalConfig, ModelConfig, RolloutConfig, RunConfig, TrainConfig
from cropi.curriculum import loop, rundir
from cropi.curriculum.phases import Run
from cropi.data.schema import PromptRecord
from cropi.model.loading import load_model, load_tokenizer
from cropi.train import grpo, grpo_state

POOL = [PromptRecord(id=f"p{i}", prompt=[{"role": "user", "content": f"What is {i}+1?"}],
                     answer=str(i + 1), source="add") for i in range(3)]


def _run(tmp_path: Path, model_dir: Path, **model: Any) -> Run:
    cfg = RunConfig(model=ModelConfig(path=str(model_dir), **model),
                    rollout=RolloutConfig(dtype="fp32"),  # the sampler uses the live model itself
                    curriculum=CurriculumConfig(stages=1, tensorboard=False))
    run = Run(cfg, root=tmp_path / "run")
    # the cached_property, pre-filled; evaluate() is stubbed in the tests that evaluate
    run.sets = SimpleNamespace(pool=POOL, tests={"targeted/t": POOL[:1]})
    return run


def _events(run: Run, event: str) -> list[dict[str, Any]]:
    lines = (run.dir.root / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_eval_and_log_restores_the_train_mode(tiny_model_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """make_policy switches the (fp32) model to eval mode; eval_and_log switches it back."""
    run = _run(tmp_path, tiny_model_dir)
    model, tok = load_model(str(tiny_model_dir)).train(), load_tokenizer(str(tiny_model_dir))
    modes: list[bool] = []

    def fake_evaluate(policy: Any, tests: Any, cfg: Any, **kw: Any) -> dict[str, Any]:
        modes.append(policy.model.training)
        return {"sets": {}, "metric": "greedy"}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    loop.eval_and_log(run, model, tok, stage=0, step=5)
    assert modes == [False]  # evaluated in eval mode
    assert model.training  # and handed back in train mode
    model.eval()
    loop.eval_and_log(run, model, tok, stage=0, step=6)
    assert not model.training
    assert [e["step"] for e in _events(run, "eval")] == [5, 6]


def test_phase_train_passes_the_device_and_times_training_apart(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path, tiny_model_dir, device="cpu")
    calls: list[dict[str, Any]] = []

    def fake_train_stage(model_path: str, out_dir: Any, records: list, cfg: Any,
                         **kw: Any) -> grpo.StageResult:
        calls.append({"records": [r.id for r in records], **kw})
        return grpo.StageResult(steps=cfg.steps_per_stage, seconds=7.0, eval_seconds=3.0)

    monkeypatch.setattr(grpo, "train_stage", fake_train_stage)
    loop.phase_train(run, 0, ["p2", "p0"])
    (call,) = calls
    assert call["records"] == ["p2", "p0"] and call["device"] == "cpu"
    (train,) = _events(run, "train")
    assert (train["seconds"], train["eval_seconds"]) == (7.0, 3.0)
    assert run.dir.state(0)["trained"]["seconds"] == 7.0


def test_phase_train_cleans_stale_temporaries_before_its_staging_folder(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that opens an existing run and trains before writing anything takes the run's
    lock (and removes a killed writer's temporaries) before train_stage makes its staging folder,
    so a write during training does not remove that live folder."""
    run = _run(tmp_path, tiny_model_dir)
    stale = run.dir.stage(0) / ".tmp-checkpoint.work-999999"  # a killed trainer's staging folder
    stale.mkdir(parents=True)
    monkeypatch.setattr(rundir, "_CLEANED", set())  # as in a new process
    seen: list[tuple[bool, bool]] = []

    def fake_train_stage(model_path: str, out_dir: Any, records: list, cfg: Any,
                         **kw: Any) -> grpo.StageResult:
        work = grpo_state.staging_dir(Path(out_dir).parent / f"{Path(out_dir).name}.work")  # as train_stage
        kw["log_fn"]({"loss": 0.0})  # a write into the run during training
        seen.append((work.is_dir(), stale.exists()))
        shutil.rmtree(work, ignore_errors=True)
        return grpo.StageResult(steps=cfg.steps_per_stage, seconds=1.0, eval_seconds=0.0)

    monkeypatch.setattr(grpo, "train_stage", fake_train_stage)
    loop.phase_train(run, 0, ["p0"])
    run.close()
    assert seen == [(True, False)]


@pytest.mark.parametrize("untargeted", ["every", "stage_end"])
def test_untargeted_sets_at_stage_ends_only(tiny_model_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, untargeted: str) -> None:
    """eval.untargeted=stage_end: the evaluations inside a stage see the targeted sets only, the
    stage's last step all of them."""
    run = _run(tmp_path, tiny_model_dir)
    run = run.with_config(dataclasses.replace(run.cfg, eval=EvalConfig(untargeted=untargeted),
                                              train=TrainConfig(steps_per_stage=10)))
    run.sets = SimpleNamespace(pool=POOL, tests={"targeted/t": POOL[:1], "untargeted/u": POOL[1:]})
    seen: list[list[str]] = []

    def fake_evaluate(policy: Any, tests: Any, cfg: Any, **kw: Any) -> dict[str, Any]:
        seen.append(sorted(tests))
        return {"sets": {}, "metric": "greedy"}

    def fake_train_stage(model_path: str, out_dir: Any, records: list, cfg: Any, **kw: Any) -> grpo.StageResult:
        model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
        for step in (5, 10):  # a stage of 10 steps: an evaluation inside it, then its end
            kw["on_eval"](model, tok, step)
        return grpo.StageResult(steps=cfg.steps_per_stage, seconds=1.0, eval_seconds=0.0)

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    monkeypatch.setattr(grpo, "train_stage", fake_train_stage)
    loop.phase_train(run, 0, ["p0"])
    both = ["targeted/t", "untargeted/u"]
    assert seen == ([both, both] if untargeted == "every" else [["targeted/t"], both])
