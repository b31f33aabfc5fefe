"""GRPO stage training on the tiny random model: checkpoint, sampler layout, optimizer continuity."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cropi.config import TrainConfig
from cropi.data.schema import PromptRecord
from cropi.model.loading import load_model, load_tokenizer
from cropi.model.template import prompt_token_ids
from cropi.train import grpo
from cropi.train.grpo_sampler import StageSampler
from cropi.train.grpo_state import is_complete_checkpoint, read_optimizer_file
from cropi.utils.errors import CropiError

RECORDS = [
    PromptRecord(id="a1", prompt=[{"role": "user", "content": "What is 1+1?"}], answer="2",
                 source="add", meta={"verifier": "numeric"}),
    PromptRecord(id="a2", prompt=[{"role": "user", "content": "What is 2+1?"}], answer="3",
                 source="add", meta={"verifier": "numeric"}),
    PromptRecord(id="m1", prompt=[{"role": "user", "content": "What is 2*3?"}], answer="6",
                 source="mul", meta={"verifier": "math"}),
    PromptRecord(id="m2", prompt=[{"role": "user", "content": "What is 3*3?"}], answer="9",
                 source="mul", meta={"verifier": "math"}),
]


@dataclass
class _Verdict:
    reward: float


def _parity_verify(text: str, record: PromptRecord) -> _Verdict:
    """A reward with variance inside every group, so that a GRPO step moves the weights.

    (A random tiny model never answers correctly: with the real verifier every advantage is 0.)
    """
    return _Verdict(float(len(text) % 2))


def _cfg(**kw: object) -> TrainConfig:
    base = dict(steps_per_stage=2, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=6)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_model(str(folder)).state_dict().items()}


def _adam_steps(folder: Path) -> set[float]:
    """The AdamW step counters saved in a checkpoint's optimizer.pt."""
    return {float(s["step"]) for s in read_optimizer_file(folder)["optimizer"]["state"].values()}


@pytest.fixture(scope="module")
def parity_reward():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grpo, "verify", _parity_verify)
        yield


@pytest.fixture(scope="module")
def stage1(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, parity_reward: None):
    out = tmp_path_factory.mktemp("grpo") / "stage_000" / "checkpoint"
    evals: list[int] = []
    logs: list[dict] = []
    res = grpo.train_stage(str(tiny_model_dir), out, RECORDS, _cfg(), step_offset=10,
                           on_eval=lambda model, tok, step: evals.append(step), eval_every=1,
                           log_fn=logs.append)
    return out, res, evals, logs


# ----------------------------------------------------------------------------- sampler (no training)
def test_sampler_layout_matches_trl_repeat_sampler() -> None:
    from trl.trainer.utils import RepeatSampler

    s = StageSampler(num_samples=5, mini_repeat_count=3, batch_size=2, repeat_count=2, num_chunks=6, seed=7)
    got = list(s)
    assert len(got) == len(s) == 6 * 2 * 2 * 3
    assert set(got) <= set(range(5))
    order = s.order()
    # TRL's own layout over positions 0..11 in identity order, mapped through our prompt order
    ref = RepeatSampler(list(range(len(order))), mini_repeat_count=3, batch_size=2, repeat_count=2,
                        shuffle=False)
    assert got == [order[j] for j in ref]
    # the order cycles through seeded permutations of the subset
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5))
    assert got == list(StageSampler(5, 3, 2, 2, 6, seed=7))
    assert order != StageSampler(5, 3, 2, 2, 6, seed=8).order()


def test_sampler_rejects_empty_subset() -> None:
    with pytest.raises(ValueError):
        StageSampler(0, 2, 1, 1, 1, seed=0)


# ----------------------------------------------------------------------------- wiring (no training)
def test_trainer_wiring_template_and_sampler(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(steps_per_stage=3, seed=5)
    cb = grpo.StageCallback(4, None, None, 0, None)
    trainer, tok = grpo._build_trainer(str(tiny_model_dir), RECORDS, cfg, tmp_path, seed=9,
                                       system_prompt="Answer briefly.", callback=cb)
    # TRL's own prompt tokenization equals the ONE templating function
    prompts = [row["prompt"] for row in trainer.train_dataset]
    ids = trainer._tokenize_prompts(prompts)[0]
    assert [list(map(int, x)) for x in ids] == [
        prompt_token_ids(tok, r.prompt, "Answer briefly.") for r in RECORDS]
    plain = [row["prompt"] for row in grpo.stage_dataset(RECORDS, tok, None)]
    assert [list(map(int, x)) for x in trainer._tokenize_prompts(plain)[0]] == [
        prompt_token_ids(tok, r.prompt) for r in RECORDS]
    key = next(iter(grpo.checkpointing_off()))  # the option's name in this transformers
    assert getattr(trainer.args, key) is False
    assert trainer.args.steps_per_generation == 1 and trainer.args.generation_batch_size == 8
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, StageSampler)
    assert (sampler.mini_repeat_count, sampler.batch_size, sampler.repeat_count,
            sampler.num_chunks, sampler.seed) == (4, 2, 1, 3, 9)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 3 and all(len(b) == 8 for b in batches)
    assert [row["idx"] for b in batches for row in b] == list(sampler)


def test_grpo_args_honour_the_model_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert grpo.grpo_args(_cfg(), tmp_path, 0, "cpu").use_cpu is True  # cpu even with CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert grpo.grpo_args(_cfg(), tmp_path, 0, "auto").use_cpu is True


def test_lora_settings_and_device_reach_the_trainer(tiny_model_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CropiError, match="lora_rank"):
        _cfg(lora_rank=0)
    with pytest.raises(CropiError, match="lora_alpha"):
        _cfg(lora_alpha=0.0)
    cfg = _cfg(lora=True, lora_rank=4, lora_alpha=12.0)
    assert (grpo.lora_config(cfg).r, grpo.lora_config(cfg).lora_alpha) == (4, 12.0)
    devices: list[str] = []
    original = grpo.load_model

    def spy(path: str, dtype: str = "fp32", device: str = "cpu"):
        devices.append(device)
        return original(path, dtype, "cpu")

    monkeypatch.setattr(grpo, "load_model", spy)
    # as on a CUDA machine: "auto" would be cuda, but the run's device is cpu
    monkeypatch.setattr(grpo, "resolve_device", lambda d: "cuda" if d == "auto" else d)
    cb = grpo.StageCallback(0, None, None, 0, None)
    trainer, _ = grpo._build_trainer(str(tiny_model_dir), RECORDS, cfg, tmp_path, seed=0,
                                     system_prompt=None, callback=cb, device="cpu")
    assert devices == ["cpu"] and trainer.args.use_cpu
    lora_a = [m for n, m in trainer.model.named_modules() if n.endswith("lora_A.default")]
    assert lora_a and all(m.weight.shape[0] == 4 for m in lora_a)
    scalings = {m.scaling["default"] for m in trainer.model.modules()
                if isinstance(getattr(m, "scaling", None), dict)}  # peft LoRA layers
    assert scalings == {3.0}  # lora_alpha / lora_rank


def test_reward_fn_uses_the_verifier() -> None:
    fn = grpo.make_reward_fn(RECORDS)
    comps = [[{"role": "assistant", "content": "The answer is 2"}],
             [{"role": "assistant", "content": "The answer is 5"}], "9"]
    assert fn(prompts=[None] * 3, completions=comps, idx=[0, 0, 3]) == [1.0, 0.0, 1.0]


def test_missing_optimizer_file_fails_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CropiError, match="does not exist"):
        grpo.train_stage(str(tiny_model_dir), tmp_path / "out", RECORDS, _cfg(),
                         init_optimizer=tmp_path / "nope")


# ----------------------------------------------------------------------------- training
def test_stage_writes_loadable_changed_checkpoint(stage1, tiny_model_dir: Path) -> None:
    out, res, evals, logs = stage1
    assert res.steps == 2 and res.seconds > 0
    assert [e["step"] for e in res.log] == [11, 12]
    for e in res.log:
        assert 0.0 <= e["reward"] <= 1.0 and "loss" in e and e["step_seconds"] > 0
    assert evals == [11, 12]  # every step, and the end is not evaluated twice
    assert [e["step"] for e in logs][:2] == [11, 12]
    assert is_complete_checkpoint(out)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    state = json.loads((out / "train_state.json").read_text())
    assert state["steps"] == 2 and state["step_offset"] == 10
    load_tokenizer(str(out))
    before, after = _weights(tiny_model_dir), _weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_train_seconds_exclude_evaluation(tiny_model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluations run inside ``trainer.train()``: their time is eval_seconds, not training."""
    pause = 1.0
    walls: list[float] = []
    original = grpo.StageGRPOTrainer.train

    def timed_train(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            walls.append(time.perf_counter() - t0)

    monkeypatch.setattr(grpo.StageGRPOTrainer, "train", timed_train)
    res = grpo.train_stage(str(tiny_model_dir), tmp_path / "out", RECORDS, _cfg(),
                           on_eval=lambda model, tok, step: time.sleep(pause), eval_every=1)
    (wall,) = walls
    assert res.eval_seconds >= 2 * pause  # evaluated after steps 1 and 2
    assert res.seconds == pytest.approx(wall - res.eval_seconds, abs=0.05)
    assert 0 < res.seconds <= wall - 2 * pause
    assert res.seconds >= sum(e["step_seconds"] for e in res.log)  # the steps are training
    state = json.loads((tmp_path / "out" / "train_state.json").read_text())
    assert (state["seconds"], state["eval_seconds"]) == (res.seconds, res.eval_seconds)


def test_optimizer_state_continues(stage1, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out1 = stage1[0]
    saved = read_optimizer_file(out1)["optimizer"]
    captured: dict = {}
    original = grpo.load_optimizer_state

    def spy(optimizer, path):
        n = original(optimizer, path)
        captured["state"] = {k: {n_: v.clone() for n_, v in s.items()}
                             for k, s in optimizer.state_dict()["state"].items()}
        captured["lr"] = [g["lr"] for g in optimizer.param_groups]
        return n

    monkeypatch.setattr(grpo, "load_optimizer_state", spy)
    res = grpo.train_stage(str(out1), tmp_path / "stage_001", RECORDS,
                           _cfg(steps_per_stage=1, learning_rate=1e-5), step_offset=12,
                           init_optimizer=out1)
    assert res.steps == 1
    assert captured["state"].keys() == saved["state"].keys() and saved["state"]
    for k, s in saved["state"].items():
        assert torch.equal(captured["state"][k]["exp_avg"], s["exp_avg"])
        assert torch.equal(captured["state"][k]["exp_avg_sq"], s["exp_avg_sq"])
    assert captured["lr"] == [1e-5] * len(captured["lr"])  # this stage's lr, not the saved one
    assert _adam_steps(tmp_path / "stage_001") == {3.0}  # 2 steps of stage 0 + 1 step of stage 1


def test_reset_optimizer_ignores_previous_state(stage1, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out1 = stage1[0]
    monkeypatch.setattr(grpo, "load_optimizer_state", lambda *a: pytest.fail("must not load"))
    grpo.train_stage(str(out1), tmp_path / "stage_001", RECORDS,
                     _cfg(steps_per_stage=1, reset_optimizer=True), step_offset=12,
                     init_optimizer=out1)
    assert _adam_steps(tmp_path / "stage_001") == {1.0}


def test_lora_stage_saves_a_merged_plain_model(tiny_model_dir: Path, tmp_path: Path,
                                               parity_reward: None) -> None:
    out = tmp_path / "lora"
    grpo.train_stage(str(tiny_model_dir), out, RECORDS, _cfg(steps_per_stage=1, lora=True,
                                                             learning_rate=1e-3))
    assert not (out / "adapter_config.json").exists()
    before, after = _weights(tiny_model_dir), _weights(out)
    assert before.keys() == after.keys()  # no lora_A / lora_B / base_layer names
    assert any(not torch.equal(before[k], after[k]) for k in before)
