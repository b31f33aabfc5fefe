"""A TRL GRPO training script with cropi choosing each stage's prompts (docs/python.md).

Your usual GRPOTrainer script (model, reward functions, GRPOConfig) plus three cropi lines:
``CropiCurriculum(...)``, ``train_dataset=curriculum.dataset(tokenizer)`` and
``curriculum.attach(trainer)``. Each stage trains ``--steps-per-stage`` GRPO steps on the
``--ratio`` share of the pool that cropi scores most useful for the target sets at the current
weights (POPI influence on beta's stored rollouts, re-scored at every stage boundary).

Here (CPU, the embedded SmolLM2-135M-Instruct, a slice of the built-in ``default-small`` suite):

    OMP_NUM_THREADS=1 python examples/trl_grpo_cropi.py --out runs/example --lora

On a GPU with Qwen2.5-1.5B-Instruct and GSM8K (downloaded once: HF_HUB_OFFLINE=0):

    HF_HUB_OFFLINE=0 python examples/trl_grpo_cropi.py --out runs/gsm8k-qwen \\
        --model Qwen/Qwen2.5-1.5B-Instruct \\
        --pool hf:openai/gsm8k:main:train --target gsm8k=hf:openai/gsm8k:main:test[:500] \\
        --pool-size 0 --target-size 0 --stages 10 --steps-per-stage 50 --ratio 0.1 \\
        --prompts-per-step 16 --samples-per-prompt 8 --max-new-tokens 512 \\
        --k-pool 8 --k-target 32 --temperature 0.5 --projection-k 8192 --bf16 --lora

Rerunning the same command resumes from the last trainer checkpoint (one per stage).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the local caches only, unless you set it to 0
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import cropi  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/example", help="output folder: cropi run dir + trainer checkpoints")
    p.add_argument("--model", default="default", help="'default' (embedded SmolLM2-135M-Instruct), a folder or hub id")
    p.add_argument("--pool", help="pool: a file or hf:NAME:CONFIG:SPLIT (default: the default-small suite)")
    p.add_argument("--target", action="append", default=[], help="NAME=FILE_OR_HF target set (repeatable)")
    p.add_argument("--pool-size", type=int, default=16, help="seeded sample of the pool (0: all of it)")
    p.add_argument("--target-size", type=int, default=6, help="prompts per target set (0: all)")
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--steps-per-stage", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.25, help="share of the pool per stage (paper: 0.10)")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--k-pool", type=int, default=4, help="beta's responses per pool prompt (paper: 8)")
    p.add_argument("--k-target", type=int, default=8, help="beta's responses per target prompt (paper: 32)")
    p.add_argument("--projection-k", type=int, default=2048)
    p.add_argument("--learning-rate", type=float, help="default: 1e-4 with --lora, else 1e-5")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (cropi then scores the adapters)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def load_data(args: argparse.Namespace) -> tuple[list, dict]:
    if args.pool:
        pool = cropi.load_prompts(args.pool)
        targets = {}
        for item in args.target:
            name, _, spec = item.partition("=")
            targets[name] = cropi.load_prompts(spec)
    else:  # the built-in suite's pool and target sets
        data = cropi.open_run(cropi.make_config(data={"suite": "default-small"})).data
        pool, targets = data.pool, dict(data.targets)
    if not targets:
        raise SystemExit("give at least one --target NAME=FILE_OR_HF")
    if 0 < args.pool_size < len(pool):
        pool = random.Random(args.seed).sample(pool, args.pool_size)
    if args.target_size > 0:
        targets = {n: recs[:args.target_size] for n, recs in targets.items()}
    return pool, targets


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    import torch
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from cropi.integrations.trl import CropiCurriculum

    out = Path(args.out)
    pool, targets = load_data(args)
    cfg = cropi.make_config(
        name="cropi", out_dir=str(out), seed=args.seed,
        model={"path": args.model},
        rollout={"k_pool": args.k_pool, "k_target": args.k_target, "temperature": args.temperature,
                 "max_new_tokens": args.max_new_tokens, "seed": args.seed},
        projection={"k": args.projection_k},
        select={"ratio": args.ratio, "seed": args.seed},
        train={"seed": args.seed},
    )
    curriculum = CropiCurriculum(cfg, pool=pool, targets=targets, steps_per_stage=args.steps_per_stage)

    model_dir = cropi.resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    grpo_args = GRPOConfig(
        output_dir=str(out / "trainer"),
        max_steps=args.stages * args.steps_per_stage,
        per_device_train_batch_size=args.prompts_per_step * args.samples_per_prompt,
        num_generations=args.samples_per_prompt,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        learning_rate=args.learning_rate or (1e-4 if args.lora else 1e-5),
        lr_scheduler_type="constant",
        beta=0.0,
        logging_steps=1,
        save_steps=args.steps_per_stage,  # a checkpoint at every stage boundary
        report_to="none",
        bf16=args.bf16,
        activation_checkpointing=torch.cuda.is_available(),
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=[curriculum.reward()],  # cropi's verifiers; add your own reward functions here
        args=grpo_args,
        train_dataset=curriculum.dataset(tokenizer),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    curriculum.attach(trainer)
    checkpoints = sorted((out / "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    trainer.save_model(str(out / "final"))

    run_dir = curriculum.run.dir
    rewards: dict[int, list[float]] = {}
    for entry in trainer.state.log_history:
        if "reward" in entry and "step" in entry:
            rewards.setdefault(curriculum.stage_at(int(entry["step"]) - 1), []).append(float(entry["reward"]))
    summary = {"seconds": round(time.perf_counter() - t0, 1), "run_dir": str(run_dir.root),
               "final_model": str(out / "final"), "stages": []}
    for stage in range(args.stages):
        sel = json.loads(run_dir.selection(stage).read_text())
        summary["stages"].append({
            "stage": stage, "selected": sel["n_selected"], "of": sel["stats"]["n_pool"],
            "families": sel["stats"]["source_mix"]["selected"],
            "mean_train_reward": round(sum(rewards.get(stage, [])) / max(len(rewards.get(stage, [])), 1), 3)})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
