"""cropi inside TRL's real GRPOTrainer on the tiny model: every stage trains exactly on cropi's
selection for that stage (with prefetching: gradient accumulation 2, steps_per_generation 2), the
switch lands on the boundary (the next stage is scored at the boundary's global step), a resumed
trainer replays the same prompts without re-scoring, and a LoRA trainer is scored on its adapters."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from parity_cli import write_parity_sets  # noqa: E402  (registers the test-only parity verifier)

import cropi  # noqa: E402
from cropi.integrations.trl import CropiCurriculum  # noqa: E402
from cropi.model.loading import load_tokenizer  # noqa: E402
from cropi.select import read_selection  # noqa: E402
from cropi.train.grpo import completion_text  # noqa: E402

trl = pytest.importorskip("trl")


def _config(tmp_path: Path, model: Path, name: str) -> cropi.RunConfig:
    files = write_parity_sets(tmp_path / "data", n_pool=8, n_target=4)
    return cropi.make_config(
        name=name, out_dir=str(tmp_path / "runs"), model={"path": str(model), "device": "cpu"},
        data={"suite": None, "pool": str(files["pool"]), "targets": {"a": str(files["target"])}},
        rollout={"k_pool": 4, "k_target": 4, "max_new_tokens": 8, "batch_size": 16},
        projection={"k": 64}, select={"ratio": 0.5}, curriculum={"tensorboard": False})


def _trainer(model: Path, cur: CropiCurriculum, out: Path, seen: list[tuple[int, list[str]]],
             **overrides: Any) -> Any:
    tok = load_tokenizer(str(model))
    tok.padding_side = "left"
    box: dict[str, Any] = {}

    def parity(completions: list[Any], id: list[str], **_: Any) -> list[float]:  # noqa: A002
        seen.append((int(box["trainer"].state.global_step), list(id)))
        return [float(len(completion_text(c)) % 2 == 0) for c in completions]

    kw: dict[str, Any] = dict(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        steps_per_generation=2, num_generations=2, max_completion_length=8, learning_rate=1e-3,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=0, activation_checkpointing=False, bf16=False)
    kw.update(overrides)
    peft_config = kw.pop("peft_config", None)
    trainer = trl.GRPOTrainer(model=str(model), reward_funcs=[parity], args=trl.GRPOConfig(**kw),
                              train_dataset=cur.dataset(tok), processing_class=tok, peft_config=peft_config)
    box["trainer"] = trainer
    return cur.attach(trainer)


def test_stages_train_on_the_selection_and_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model_dir, "trl")
    cur = CropiCurriculum(cfg, steps_per_stage=2)
    seen: list[tuple[int, list[str]]] = []
    trainer = _trainer(tiny_model_dir, cur, tmp_path / "out", seen, save_strategy="steps", save_steps=1)
    trainer.train()
    run_dir = tmp_path / "runs" / "trl"
    assert trainer.state.global_step == 4
    assert cur.served == [(0, 0), (1, 2)]  # one epoch per stage, opened at the boundary's step
    sampler = trainer._get_train_sampler()
    for stage in (0, 1):
        sel = read_selection(run_dir / "stages" / f"stage_{stage:03d}" / "selection.json")
        assert sel["policy"] == "influence" and 1 <= len(sel["ids"]) <= 4
        # the prompts of every generation of the stage, in the sampler's predicted order
        chunks = sampler.stage_sampler(stage, len(sel["ids"])).chunks()
        expected = [sorted(sel["ids"][j] for j in chunk for _ in range(2)) for chunk in chunks]
        got = [sorted(ids) for step, ids in seen if step // 2 == stage]
        assert got == expected
        assert set(i for step, ids in seen if step // 2 == stage for i in ids) == set(sel["ids"])
        spec = json.loads((run_dir / "stages" / f"stage_{stage:03d}" / "features" / "pool" / "spec.json").read_text())["spec"]
        assert spec["model"]["trainer_global_step"] == 2 * stage  # scored at the boundary's weights
    # one generation per optimizer step (GA 2 = steps_per_generation 2), at steps 0, 1, 2, 3
    assert [step for step, _ in seen] == [0, 1, 2, 3]
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["gradient"]["params"] == "all" and stored["curriculum"]["stages"] == 2
    assert all(p.requires_grad for p in trainer.model.parameters())

    # resume from the checkpoint in the middle of stage 1: same prompts, no re-scoring
    state_before = (run_dir / "stages" / "stage_001" / "state.json").read_text()
    cur2 = CropiCurriculum(cfg, steps_per_stage=2)
    seen2: list[tuple[int, list[str]]] = []
    trainer2 = _trainer(tiny_model_dir, cur2, tmp_path / "out", seen2, save_strategy="no")
    trainer2.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert cur2.served == [(1, 3)]
    assert seen2 == [s for s in seen if s[0] == 3]
    assert (run_dir / "stages" / "stage_001" / "state.json").read_text() == state_before


def test_lora_trainer_is_scored_on_its_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig

    cfg = _config(tmp_path, tiny_model_dir, "lora")
    cur = CropiCurriculum(cfg, steps_per_stage=1)
    seen: list[tuple[int, list[str]]] = []
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = _trainer(tiny_model_dir, cur, tmp_path / "out", seen, max_steps=2, gradient_accumulation_steps=1,
                       steps_per_generation=1, peft_config=lora)
    trainer.train()
    run_dir = tmp_path / "runs" / "lora"
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (stored["gradient"]["params"], stored["gradient"]["include"]) == ("filter", "lora_")
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)  # the trainer's flags survived scoring
    for stage in (0, 1):
        spec = json.loads((run_dir / "stages" / f"stage_{stage:03d}" / "features" / "pool" / "spec.json").read_text())["spec"]
        assert spec["params"]["n_tensors"] == len(trained) == 8  # 2 layers x (q, v) x (A, B)
        sel = read_selection(run_dir / "stages" / f"stage_{stage:03d}" / "selection.json")["ids"]
        assert set(i for step, ids in seen if step == stage for i in ids) <= set(sel)


def test_a_stage_must_be_whole_generations(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model_dir, "bad")
    cur = CropiCurriculum(cfg, steps_per_stage=1)
    with pytest.raises(cropi.CropiError, match="whole number of generations"):
        _trainer(tiny_model_dir, cur, tmp_path / "out", [], gradient_accumulation_steps=1, steps_per_generation=2)
