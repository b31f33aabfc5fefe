"""The phases of a CROPI run, each a named function that is skipped when already done.

rollouts (once) -> per stage: score -> select -> train -> evaluate. Every phase writes its outputs
atomically and marks itself in the stage's ``state.json`` last, so a killed run resumes cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from cropi.config import RunConfig
from cropi.curriculum.names import check_names
from cropi.curriculum.rundir import LOCK_FILE, RunDir, remove_stale
from cropi.data.io import dataset_fingerprint
from cropi.data.sets import DataSets, load_sets
from cropi.model.fingerprint import model_fingerprint
from cropi.model.loading import load_model, load_tokenizer, resolve_device, resolve_model_path
from cropi.rollout.collect import Policy, collect, generation_dtype, make_policy
from cropi.rollout.store import PromptRollouts, load_rollouts
from cropi.utils.errors import CropiError, check_stop
from cropi.utils.locking import Lease, hold, waiting
from cropi.utils.work import Work

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A run directory plus its resolved config, data and (lazily) models."""

    cfg: RunConfig
    overwrite: bool = False
    root: Path | None = None  # default: cfg.out_dir / cfg.name
    rollouts_root: Path | None = None  # default: ROOT/rollouts
    sets: DataSets | None = None  # default: loaded from cfg.data on first use
    _policies: dict[str, Policy] = field(default_factory=dict, init=False, repr=False)
    config_changes: list[str] = field(default_factory=list, init=False, repr=False)
    """Fields :meth:`save_config` changed in the stored config.yaml (for the CLI to report)."""

    def __post_init__(self) -> None:
        check_names(self.cfg)

    @cached_property
    def dir(self) -> RunDir:
        """The run directory. Its config.yaml is written by the first phase that computes something
        (:func:`phase_rollouts`) and updated by :meth:`save_config` when a command succeeds."""
        return RunDir(self.root or self.cfg.run_dir, self.rollouts_root, self.cfg.curriculum.tensorboard)

    def save_config(self) -> list[str]:
        """Record this command's config after it succeeded (see :meth:`RunDir.write_config`);
        returns the fields that changed (also kept in :attr:`config_changes`). The last write of
        an operation on the run: the run's writer lock is released after it (a later write takes
        it again)."""
        try:
            changes = self.dir.write_config(self.cfg)
        finally:
            self.dir.release()
        self.config_changes.extend(c for c in changes if c not in self.config_changes)
        return changes

    def lock(self) -> None:
        """Take the run directory's writer lock now (:meth:`RunDir.acquire`); the first write
        takes it anyway. Another process holding it: one line naming it (exit 2 in the CLI), or
        a wait under :func:`cropi.utils.locking.waiting` (``--wait``)."""
        self.dir.acquire()

    def close(self) -> None:
        """Release the models and the run's writer lock."""
        self.release_policies()
        self.dir.release()

    @property
    def data(self) -> DataSets:
        """The run's prompt sets: the ones given (``sets``), else those ``cfg.data`` names (loaded once)."""
        if self.sets is None:
            self.sets = load_sets(self.cfg.data)
        return self.sets

    def with_config(self, cfg: RunConfig) -> Run:
        """The same run directory, shared rollouts and data under another config (no models kept)."""
        return dataclasses.replace(self, cfg=cfg)

    @property
    def device(self) -> str:
        return resolve_device(self.cfg.model.device)

    def check_stage(self, stage: int) -> None:
        """Refuse a stage index outside ``0 .. curriculum.stages - 1``."""
        n = self.cfg.curriculum.stages
        if not 0 <= stage < n:
            raise CropiError(f"stage {stage} is not a stage of this run (curriculum.stages={n}: "
                             f"stages 0 to {n - 1})", file=self.root or self.cfg.run_dir,
                             fix=f"use --stage 0 to {n - 1}, or the run's own curriculum.stages")

    def model_path(self, stage: int) -> str:
        """Weights at the start of ``stage``: beta for stage 0, else the previous checkpoint."""
        self.check_stage(stage)
        if stage == 0:
            return resolve_model_path(self.cfg.model.path)
        ckpt = self.dir.checkpoint(stage - 1)
        if not (ckpt / "config.json").exists():
            raise CropiError(f"stage {stage - 1} has no checkpoint (stage {stage} starts from it)",
                             file=ckpt, fix=f"run stage {stage - 1}'s training first with `cropi run`, "
                                            "or use --stage 0")
        return str(ckpt)

    def policy(self, path: str) -> Policy:
        if path not in self._policies:
            self.release_policies()  # keep one model in memory
            self._policies[path] = load_policy(path, self.cfg)
        return self._policies[path]

    def release_policies(self) -> None:
        """Drop the cached models (and stop an inference engine holding GPU memory)."""
        for policy in self._policies.values():
            close = getattr(policy.sampler, "close", None)
            if close is not None:
                close()
        self._policies.clear()

    def base_spec(self, model_path: str) -> dict[str, Any]:
        return {"model": model_fingerprint(model_path), "system_prompt": self.cfg.model.system_prompt}


def load_policy(path: str, cfg: RunConfig) -> Policy:
    """The model at ``path`` (fp32, on ``model.device``) with its tokenizer and the sampler of
    ``rollout.backend``: what every phase and ``cropi eval`` sample and score with."""
    model = load_model(path, "fp32", resolve_device(cfg.model.device))
    return make_policy(model, load_tokenizer(path), cfg.rollout, cfg.model.system_prompt,
                       model_path=resolve_model_path(path))


def rollouts_lock(run: Run) -> Lease:
    """The lock of the run's rollouts folder, which runs can share (a comparison's draw): whoever
    samples holds it, the others wait for it (saying for whom) and then load what it wrote.
    Taking it removes the temporaries a killed sampler left in the sets' folders."""
    root = run.dir.rollouts_root
    with waiting(True):  # beside the folder: a command refused before sampling leaves no folder
        lease = hold(root.with_name(f".{root.name}{LOCK_FILE}"), what=f"beta's rollouts in {root}")
    try:
        n = remove_stale(root / "pool") + remove_stale(root / "targets")
        if n:
            log.warning("removed %d temporary files left in %s by an interrupted writer", n, root)
    except BaseException:
        lease.release()
        raise
    return lease


def phase_rollouts(run: Run) -> dict[str, list[PromptRollouts]]:
    """Beta's rollouts of the pool (k_pool) and of every target set (k_target), once. Takes the
    run's writer lock, and the rollouts folder's (:func:`rollouts_lock`) while it samples."""
    beta = run.model_path(0)
    spec = run.base_spec(beta)
    cfg = run.cfg.rollout
    sets = [("pool", run.data.pool, cfg.k_pool)]
    sets += [(f"targets/{n}", recs, cfg.k_target) for n, recs in run.data.targets.items()]
    run.lock()
    if not run.dir.config_path.is_file():  # a new run describes itself before computing anything
        run.dir.write_config(run.cfg)
    t0 = time.perf_counter()
    out = {}
    work: dict[str, Work] = {}
    seconds: dict[str, float] = {}
    with rollouts_lock(run):
        for name, records, k in sets:
            check_stop(f"before beta's rollouts of {name}")
            folder = run.dir.rollouts(name)
            set_spec = {**spec, "dataset": dataset_fingerprint(records)}
            t_set = time.perf_counter()
            work[name] = collect(records, folder, lambda: run.policy(beta), k, cfg, set_spec, name=name,
                                 overwrite=run.overwrite)
            seconds[name] = time.perf_counter() - t_set  # the first set's includes loading beta
            out[name] = load_rollouts(folder)
    if any(w.prompts for w in work.values()):
        run.dir.log_metrics("rollouts", seconds=time.perf_counter() - t0,
                            sampled={n: w.prompts for n, w in work.items()},
                            work={n: w.as_dict() for n, w in work.items()}, seconds_by_set=seconds,
                            dtype=str(generation_dtype(cfg.dtype, run.device)).removeprefix("torch."))
    return out


def family_pass_rates(items: list[PromptRollouts]) -> dict[str, dict[str, float]]:
    """Per family: prompts, mean pass rate, share of prompts with all-equal rewards."""
    fam: dict[str, list[PromptRollouts]] = {}
    for it in items:
        fam.setdefault(it.source, []).append(it)
    return {f: {"n": len(v), "pass_rate": float(np.mean([i.pass_rate for i in v])),
                "zero_grad": float(np.mean([i.zero_grad for i in v]))}
            for f, v in sorted(fam.items())}


def load_run_rollouts(run: Run) -> dict[str, list[PromptRollouts]]:
    out = {"pool": load_rollouts(run.dir.rollouts("pool"))}
    for n in run.data.targets:
        out[f"targets/{n}"] = load_rollouts(run.dir.rollouts(f"targets/{n}"))
    return out
