"""The fast GRPO step computes what TRL's own path computes.

The shared-prefix loss pass (each prompt once, completions on its KV cache) gives the same
per-token log-probs, entropies, loss and gradient as TRL's pass on a fixed batch; the bf16 shadow
used for generation follows the fp32 policy after an optimizer step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cropi.config import TrainConfig
from cropi.data.schema import PromptRecord
from cropi.train import grpo, grpo_speed

RECORDS = [
    PromptRecord(id="a1", prompt=[{"role": "user", "content": "What is 1+1?"}], answer="2",
                 source="add", meta={"verifier": "numeric"}),
    PromptRecord(id="m1", prompt=[{"role": "user", "content": "What is 2*3, and then 4*5 plus 6?"}],
                 answer="6", source="mul", meta={"verifier": "math"}),
]


def _rewardish(text: str, record: PromptRecord):
    class V:
        reward = float(len(text) % 2)
    return V()


@pytest.fixture(scope="module")
def trainer_and_batch(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grpo, "verify", _rewardish)
        cfg = TrainConfig(steps_per_stage=1, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=8)
        cb = grpo.StageCallback(0, None, None, 0, None)
        trainer, _ = grpo._build_trainer(str(tiny_model_dir), RECORDS, cfg,
                                         tmp_path_factory.mktemp("speed"), 0, None, cb, "cpu")
        torch.manual_seed(0)
        batch = next(iter(trainer.get_train_dataloader()))
        inputs = trainer._generate_and_score_completions(batch)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    return trainer, inputs


def _loss_and_grad(trainer, inputs, speed: grpo_speed.StageSpeed):
    trainer.speed = speed
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_shared_prefix_logps_equal_trl(trainer_and_batch) -> None:
    trainer, inputs = trainer_and_batch
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    keep = inputs["completion_ids"].size(1)
    cmask = inputs["completion_mask"].bool()
    assert len({tuple(r) for r in inputs["prompt_ids"].tolist()}) == 2  # two prompts, padded to one width
    assert (inputs["prompt_mask"] == 0).any()  # the shorter prompt is left-padded
    with torch.no_grad():
        trainer.speed = grpo_speed.ROUND1
        ref_lp, ref_ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep,
                                                                      compute_entropy=True)
        trainer.speed = grpo_speed.FAST
        lp, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep,
                                                              compute_entropy=True)
    torch.testing.assert_close(lp[cmask], ref_lp[cmask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[cmask], ref_ent[cmask], rtol=1e-5, atol=1e-5)
    assert (lp[~cmask] == 0).all()


def test_shared_prefix_loss_and_gradient_equal_trl(trainer_and_batch) -> None:
    trainer, inputs = trainer_and_batch
    assert inputs["advantages"].abs().sum() > 0  # a batch with a real gradient
    ref_loss, ref_grads = _loss_and_grad(trainer, inputs, grpo_speed.ROUND1)
    loss, grads = _loss_and_grad(trainer, inputs, grpo_speed.FAST)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_speed_resolves_bf16_generation_per_device(monkeypatch) -> None:
    for native in (True, False):
        monkeypatch.setattr(grpo_speed, "bf16_is_fast", lambda device, native=native: native)
        assert grpo_speed.FAST.resolved("cpu").bf16_generation is native
        assert grpo_speed.FAST.resolved("cpu", "fp32").bf16_generation is False  # train.generation_dtype
        assert grpo_speed.FAST.resolved("cpu", "bf16").bf16_generation is True
    assert grpo_speed.ROUND1.resolved("cpu", "bf16") == grpo_speed.ROUND1  # set explicitly: kept


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_train_generation_dtype_reaches_the_trainer(tiny_model_dir, tmp_path, dtype) -> None:
    cfg = TrainConfig(steps_per_stage=1, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=8,
                      generation_dtype=dtype)
    cb = grpo.StageCallback(0, None, None, 0, None)
    trainer, _ = grpo._build_trainer(str(tiny_model_dir), RECORDS, cfg, tmp_path, 0, None, cb, "cpu")
    assert trainer.speed.bf16_generation is (dtype == "bf16")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_shadow_follows_policy(trainer_and_batch, dtype) -> None:
    trainer, _ = trainer_and_batch
    trainer.speed = dataclasses.replace(grpo_speed.FAST, bf16_generation=dtype == torch.bfloat16)
    trainer._shadow = None
    shadow = trainer._shadow_policy()
    assert next(shadow.parameters()).dtype == dtype
    assert trainer._shadow_policy() is shadow  # no step: no refresh
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01)
    trainer.state.global_step += 1
    try:
        trainer._shadow_policy()
        for s, p in zip(shadow.parameters(), trainer.model.parameters(), strict=True):
            torch.testing.assert_close(s, p.to(dtype))
        out, lps = trainer._generate_single_turn([[1, 2, 3], [4, 5]], None, {}, 2)
        assert lps is None and len(out) == 2 and all(1 <= len(o) <= 8 for o in out)
    finally:
        trainer._shadow = None
        trainer.state.global_step -= 1
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.sub_(0.01)


def test_concatenated_completions_equal_trl(trainer_and_batch, monkeypatch) -> None:
    """Each prompt's completions as one sequence on its cache (forced here: it pays only for
    uneven completions of a real model) give TRL's log-probs, entropies, loss and gradient, with
    completions of uneven length (cut here: the tiny model's all run to the limit)."""
    trainer, inputs = trainer_and_batch
    inputs = dict(inputs)
    cut = torch.as_tensor([8, 5, 3, 1, 8, 6, 2, 7])
    inputs["completion_mask"] = (torch.arange(inputs["completion_ids"].size(1))[None] < cut[:, None]).to(
        inputs["completion_mask"].dtype)
    inputs["completion_ids"] = inputs["completion_ids"].masked_fill(inputs["completion_mask"] == 0,
                                                                    trainer._tokenizer.pad_token_id)
    ran: list[int] = []
    real = grpo_speed.concat_mask

    def counted(prefix, lengths, device="cpu"):  # noqa: ANN001, ANN202
        ran.append(len(lengths))
        return real(prefix, lengths, device)

    monkeypatch.setattr(grpo_speed, "concat_pays", lambda *a: True)
    monkeypatch.setattr(grpo_speed, "concat_mask", counted)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    keep = inputs["completion_ids"].size(1)
    cmask = inputs["completion_mask"].bool()
    with torch.no_grad():
        ref_lp, ref_ent = grpo_speed.shared_prefix_logps(trainer.model, ids, mask, keep, True)
        lp, ent = grpo_speed.shared_prefix_logps(trainer.model, ids, mask, keep, True, concat=True)
    assert ran == [4, 4]  # both prompts, 4 completions each
    torch.testing.assert_close(lp[cmask], ref_lp[cmask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[cmask], ref_ent[cmask], rtol=1e-5, atol=1e-5)
    assert (lp[~cmask] == 0).all() and (ent[~cmask] == 0).all()
    assert grpo_speed.FAST.concat_completions and not grpo_speed.ROUND1.concat_completions
    ref_loss, ref_grads = _loss_and_grad(trainer, inputs, grpo_speed.ROUND1)
    loss, grads = _loss_and_grad(trainer, inputs, grpo_speed.FAST)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
