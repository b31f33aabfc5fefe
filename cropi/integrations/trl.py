"""cropi inside your own TRL ``GRPOTrainer`` (single process): the trainer samples only from the
current stage's selection, and at each stage boundary cropi re-scores the pool at the trainer's
current weights (POPI on the stored beta rollouts) and switches the selection.

    curriculum = CropiCurriculum(cfg, steps_per_stage=50)
    trainer = GRPOTrainer(model=..., reward_funcs=[...], args=GRPOConfig(max_steps=200, ...),
                          train_dataset=curriculum.dataset(tokenizer))
    curriculum.attach(trainer)
    trainer.train()                      # or trainer.train(resume_from_checkpoint=...)

How the switch lands exactly on the boundary: TRL's dataloader prefetches (accelerate reads one
batch ahead, the Trainer reads ``gradient_accumulation_steps`` batches per optimizer step, and a
generation batch serves ``steps_per_generation x num_iterations`` micro-steps), so a sampler that
changed its prompts in the middle of an epoch would hand out stale prompts. Here **one stage is
one Trainer epoch**: the sampler's length is exactly ``steps_per_stage`` optimizer steps of
generation batches, in TRL's ``RepeatSampler`` layout (:class:`~cropi.train.grpo_sampler.StageSampler`),
and the Trainer opens a new dataloader iterator for each epoch only after the previous epoch's
last optimizer step. The sampler's ``__iter__`` then reads ``trainer.state.global_step``
(= stage x steps_per_stage), scores and selects that stage (cropi's own
:func:`~cropi.curriculum.score_phase.phase_score` and :func:`~cropi.curriculum.select_phase.phase_select`
on the run directory, with the live model), and yields that selection only.

Resuming: ``trainer.train(resume_from_checkpoint=...)`` restores ``global_step``; the stage's
``selection.json`` is on disk, so the resumed epoch replays the same prompt order (seeded per
stage) without re-scoring at mid-stage weights. A checkpoint taken exactly at a boundary scores
the next stage at the checkpoint's weights, which are the boundary weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Sampler

from cropi.api import open_run
from cropi.config import GradientConfig, RunConfig
from cropi.curriculum.phases import Run, phase_rollouts
from cropi.curriculum.score_phase import phase_score
from cropi.curriculum.select_phase import phase_select
from cropi.data.schema import PromptRecord
from cropi.model.fingerprint import model_fingerprint
from cropi.rollout.collect import Policy, make_policy
from cropi.rollout.store import PromptRollouts
from cropi.select import get_policy, policy_fact
from cropi.train.grpo import make_reward_fn, stage_dataset
from cropi.train.grpo_sampler import StageSampler
from cropi.utils.errors import CropiError

log = logging.getLogger(__name__)

__all__ = ["CropiCurriculum", "CurriculumSampler", "trainable_gradient"]


# ----------------------------------------------------------------------------- scoring the live model
def trainable_gradient(model: torch.nn.Module, gradient: GradientConfig) -> GradientConfig:
    """``gradient`` restricted to the parameters ``model`` trains (``requires_grad``): ``all`` for
    full fine-tuning, the adapters (``filter`` on ``lora_``) for a PEFT LoRA model, else the exact
    names."""
    named = list(model.named_parameters())
    trained = [n for n, p in named if p.requires_grad]
    if not trained:
        raise CropiError("the trainer's model has no trainable parameter", field="gradient.params")
    if len(trained) == len(named):
        return dataclasses.replace(gradient, params="all", include=None, exclude=None)
    lora = {n for n, _ in named if "lora_" in n}
    if lora == set(trained):
        return dataclasses.replace(gradient, params="filter", include="lora_", exclude=None)
    names = "|".join(re.escape(n) for n in trained)
    return dataclasses.replace(gradient, params="filter", include=f"^(?:{names})$", exclude=None)


@contextmanager
def _scoring_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the POPI pass; the trainer's trainable flags, mode and empty grads after it."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # whatever context the dataloader is iterated in
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)


@dataclass
class _LiveRun(Run):
    """A :class:`Run` whose stage weights are the trainer's live model (not a checkpoint folder)."""

    live_model: Any = None
    live_tokenizer: Any = None
    live_step: int = 0
    beta_fingerprint: str = ""

    def model_path(self, stage: int) -> str:
        self.check_stage(stage)
        return f"trainer:global_step={self.live_step}"

    def policy(self, path: str) -> Policy:
        if self.cfg.gradient.mode == "onpolicy":  # fresh samples from the live model (a bf16 copy)
            return make_policy(self.live_model, self.live_tokenizer, self.cfg.rollout, self.cfg.model.system_prompt)
        return Policy(self.live_tokenizer, self.live_model, sampler=None,  # type: ignore[arg-type]
                      system_prompt=self.cfg.model.system_prompt)  # POPI reads only the model

    def base_spec(self, model_path: str) -> dict[str, Any]:
        return {"model": {"trainer_global_step": self.live_step, "beta": self.beta_fingerprint},
                "system_prompt": self.cfg.model.system_prompt}


# ----------------------------------------------------------------------------- the sampler
class CurriculumSampler(Sampler[int]):
    """Dataset indices of one stage per epoch: ``chunks`` generation batches drawn from the stage's
    selection (a seeded permutation stream, in TRL's repeated layout), the stage read from the
    trainer's global step when the epoch starts."""

    def __init__(self, curriculum: CropiCurriculum, trainer: Any, layout: dict[str, int]) -> None:
        self.curriculum = curriculum
        self.trainer = trainer
        self.layout = layout

    def stage_sampler(self, stage: int, n_selected: int) -> StageSampler:
        lay = self.layout
        return StageSampler(num_samples=n_selected, mini_repeat_count=lay["mini_repeat_count"],
                            batch_size=lay["batch_size"], repeat_count=lay["repeat_count"],
                            num_chunks=lay["num_chunks"],
                            seed=self.curriculum.run.cfg.train.seed + stage * self.curriculum.steps_per_stage)

    def __iter__(self) -> Iterator[int]:
        stage = self.curriculum.stage_at(int(self.trainer.state.global_step))
        ids = self.curriculum.selection(stage)
        positions = [self.curriculum.positions[i] for i in ids]
        self.curriculum.served.append((stage, int(self.trainer.state.global_step)))
        for j in self.stage_sampler(stage, len(positions)):
            yield positions[j]

    def __len__(self) -> int:
        lay = self.layout
        return lay["num_chunks"] * lay["batch_size"] * lay["repeat_count"] * lay["mini_repeat_count"]


# ----------------------------------------------------------------------------- the plug-in
class CropiCurriculum:
    """A cropi curriculum served to a TRL ``GRPOTrainer`` you build yourself.

    Args:
        config: the run's config (:func:`cropi.make_config`); its run directory
            (``out_dir/name``) holds beta's rollouts, each stage's scores and selection.
            ``model.path`` must name the trainer's initial model (beta's rollouts come from it).
            Used: rollout, gradient, projection, score, select (policy, ratio, seed), train.seed,
            train.steps_per_stage. The trainer's own arguments drive training.
        pool, targets: prompt records instead of ``config.data`` (as :func:`cropi.open_run`).
        steps_per_stage: optimizer steps per stage (default ``train.steps_per_stage``). The
            number of stages is ``ceil(max_steps / steps_per_stage)`` (or ``num_train_epochs``
            when ``max_steps`` is not set).
        policy: a registered selection policy (default ``select.policy``).
        score_params: ``"trainable"`` (default): the gradient covers the parameters the trainer
            trains (the LoRA adapters when it was given a ``peft_config``); ``"config"``:
            ``gradient.params`` as configured.
        id_column: the train dataset's column holding cropi prompt ids.
    """

    def __init__(self, config: RunConfig, *, pool: Sequence[PromptRecord] | None = None,
                 targets: Mapping[str, Sequence[PromptRecord]] | None = None,
                 steps_per_stage: int | None = None, policy: str | None = None,
                 score_params: str = "trainable", id_column: str = "id") -> None:
        if score_params not in ("trainable", "config"):
            raise CropiError(f"score_params={score_params!r}", fix="use 'trainable' or 'config'")
        self.run: Run = open_run(config, pool=pool, targets=targets)
        self.steps_per_stage = int(steps_per_stage or config.train.steps_per_stage)
        if self.steps_per_stage < 1:
            raise CropiError(f"steps_per_stage={self.steps_per_stage}", fix="use >= 1")
        self.policy = policy or config.select.policy
        get_policy(self.policy)
        self.score_params = score_params
        self.id_column = id_column
        self.trainer: Any = None
        self.positions: dict[str, int] = {}
        self.served: list[tuple[int, int]] = []  # (stage, global_step) per epoch the sampler served
        self._rollouts: dict[str, list[PromptRollouts]] | None = None

    # --- data for the trainer ------------------------------------------------------------
    @property
    def pool(self) -> list[PromptRecord]:
        return list(self.run.data.pool)

    def dataset(self, tokenizer: Any, system_prompt: str | None = None) -> Any:
        """The pool as a ``datasets.Dataset`` for ``GRPOTrainer(train_dataset=...)``: ``prompt``
        (conversational when the tokenizer has a chat template, with ``system_prompt`` or
        ``model.system_prompt``), ``id``, ``answer``, ``source`` and ``idx`` (pool position, for
        :meth:`reward`)."""
        pool = self.pool
        ds = stage_dataset(pool, tokenizer, system_prompt or self.run.cfg.model.system_prompt)
        for name, values in (("id", [r.id for r in pool]), ("answer", [r.answer for r in pool]),
                             ("source", [r.source for r in pool])):
            ds = ds.add_column(name, values)
        return ds

    def reward(self) -> Any:
        """A TRL reward function scoring completions with each pool record's cropi verifier
        (reads the ``idx`` column of :meth:`dataset`); 1.0 correct, 0.0 otherwise."""
        return make_reward_fn(self.pool)

    # --- wiring -------------------------------------------------------------------------------
    def attach(self, trainer: Any) -> Any:
        """Wire the curriculum into ``trainer`` (call before ``trainer.train()``); returns it.

        Samples beta's rollouts now when the run directory has none (from ``model.path``), maps
        the train dataset's ``id`` column to the pool, replaces the trainer's train sampler and
        checks that a stage is a whole number of generation batches.
        """
        args = trainer.args
        if trainer.accelerator.num_processes != 1:
            raise CropiError(f"the trainer runs {trainer.accelerator.num_processes} processes",
                             fix="cropi.integrations.trl is single-process; on clusters use verl with "
                                 "cropi.integrations.verl_sampler.CropiCurriculumSampler")
        dataset = trainer.train_dataset
        if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "column_names"):
            raise CropiError("the trainer has no map-style datasets.Dataset to sample from",
                             fix="pass train_dataset=curriculum.dataset(tokenizer)")
        if self.id_column not in dataset.column_names:
            raise CropiError(f"the train dataset has no {self.id_column!r} column",
                             fix="use curriculum.dataset(tokenizer), or add the cropi ids as a column")
        self.positions = {}
        for pos, rid in enumerate(dataset[self.id_column]):
            self.positions.setdefault(str(rid), pos)
        missing = [r.id for r in self.run.data.pool if r.id not in self.positions]
        if missing:
            raise CropiError(f"{len(missing)} of {len(self.run.data.pool)} pool prompts are not in the "
                             f"train dataset (e.g. {missing[:3]})", field=self.id_column,
                             fix="train on curriculum.dataset(tokenizer), built from the same pool")
        layout = self._layout(trainer)
        stages = self._stage_count(args)
        cfg = self.run.cfg
        gradient = cfg.gradient
        model = trainer.accelerator.unwrap_model(trainer.model)
        if self.score_params == "trainable":
            gradient = trainable_gradient(model, gradient)
        cfg = dataclasses.replace(cfg, gradient=gradient,
                                  curriculum=dataclasses.replace(cfg.curriculum, stages=stages),
                                  train=dataclasses.replace(cfg.train, steps_per_stage=self.steps_per_stage))
        self.run = self.run.with_config(cfg)
        self._rollouts = phase_rollouts(self.run)  # beta = model.path; loads when already sampled
        self.run.release_policies()
        self.run.save_config()
        self.trainer = trainer
        sampler = CurriculumSampler(self, trainer, layout)
        trainer._get_train_sampler = lambda dataset=None: sampler  # noqa: SLF001 - TRL's documented hook
        log.info("cropi curriculum: %d stages of %d steps, %d generation batches each; run %s",
                 stages, self.steps_per_stage, layout["num_chunks"], self.run.dir.root)
        return trainer

    def _layout(self, trainer: Any) -> dict[str, int]:
        """TRL's sampler layout and the generation batches of one stage (exact, or an error)."""
        args = trainer.args
        k = int(trainer.num_generations)
        gen = int(args.generation_batch_size)
        repeat = int(trainer.num_iterations) * int(args.steps_per_generation)
        micro = self.steps_per_stage * int(args.gradient_accumulation_steps)
        if micro % repeat:
            raise CropiError(
                f"a stage of {self.steps_per_stage} steps x {args.gradient_accumulation_steps} accumulation "
                f"= {micro} micro-batches is not a whole number of generations (each serves "
                f"steps_per_generation x num_iterations = {repeat})",
                fix="make steps_per_stage x gradient_accumulation_steps a multiple of "
                    "steps_per_generation x num_iterations: the stage switch must fall between generations")
        return {"mini_repeat_count": k, "batch_size": gen // k, "repeat_count": repeat,
                "num_chunks": micro // repeat}

    def _stage_count(self, args: Any) -> int:
        if args.max_steps and args.max_steps > 0:
            return max(1, math.ceil(args.max_steps / self.steps_per_stage))
        return max(1, math.ceil(args.num_train_epochs))

    # --- stages ---------------------------------------------------------------------------
    def stage_at(self, global_step: int) -> int:
        """The stage that trains optimizer step ``global_step`` (0-based)."""
        return global_step // self.steps_per_stage

    def selection(self, stage: int) -> list[str]:
        """The ids stage ``stage`` trains on: the stored selection, else scored (when the policy
        needs scores) at the trainer's current weights and selected now."""
        if self.trainer is None:
            raise CropiError("the curriculum is not attached to a trainer", fix="call attach(trainer) first")
        run = self.run
        run.check_stage(stage)
        if run.dir.done(stage, "selected") and run.dir.selection(stage).exists():
            return list(phase_select(run, stage, self._rollouts["pool"], policy=self.policy)["ids"])
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        live = _LiveRun(run.cfg, overwrite=run.overwrite, root=run.dir.root,
                        live_model=model, live_tokenizer=self.trainer.processing_class,
                        live_step=int(self.trainer.state.global_step),
                        beta_fingerprint=model_fingerprint(run.model_path(0)), sets=run.data)
        if policy_fact(self.policy, "needs_scores"):
            with _scoring_mode(model):
                phase_score(live, stage, self._rollouts)
        ids = list(phase_select(live, stage, self._rollouts["pool"], policy=self.policy)["ids"])
        if not ids:
            raise CropiError(f"stage {stage} selects no prompts", file=run.dir.selection(stage))
        log.info("cropi curriculum: stage %d at step %d trains on %d prompts", stage,
                 self.trainer.state.global_step, len(ids))
        return ids
