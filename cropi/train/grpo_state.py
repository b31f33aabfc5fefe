"""Stage checkpoints: optimizer continuity across stages and atomic checkpoint folders.

A stage checkpoint is a plain model folder (``save_pretrained`` + tokenizer) plus

- ``optimizer.pt``      ``{"format": 1, "optimizer": state_dict, "scheduler": state_dict | None}``
- ``train_state.json``  steps, step_offset, seconds, ... (written last inside the temp folder)

The folder is assembled under a temporary sibling name and renamed onto its final name, so a
killed run never leaves a half checkpoint that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
FORMAT_VERSION = 1


def save_optimizer(path: str | Path, optimizer: Any, scheduler: Any | None = None) -> None:
    """Write the optimizer (and scheduler) state dicts to ``path`` atomically."""
    payload = {
        "format": FORMAT_VERSION,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_optimizer_file(path: str | Path) -> dict[str, Any]:
    """Load an ``optimizer.pt`` written by :func:`save_optimizer` (tensors on CPU)."""
    path = Path(path)
    if path.is_dir():
        path = path / OPTIMIZER_FILE
    if not path.exists():
        raise CropiError("does not exist", file=path,
                         fix="train the previous stage to completion, or set train.reset_optimizer")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CropiError("is not a cropi optimizer file", file=path, fix="set train.reset_optimizer")
    return payload


def load_optimizer_state(optimizer: Any, path: str | Path) -> int:
    """Restore the per-parameter state (AdamW moments, step counts) saved at ``path``.

    The current hyper-parameters of every param group (learning rate, betas, weight decay) are
    kept: only the state moves across stages, so a changed learning rate takes effect. Returns
    the number of parameters with restored state.
    """
    payload = read_optimizer_file(path)
    saved = payload["optimizer"]
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups) or any(
        len(s["params"]) != len(g["params"]) for s, g in zip(saved["param_groups"], groups, strict=True)
    ):
        raise CropiError(
            "was saved for different trainable parameters than this stage's", file=path,
            fix="use the same model and LoRA setting in every stage, or set train.reset_optimizer",
        )
    current = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    optimizer.load_state_dict(saved)
    for group, hyper in zip(optimizer.param_groups, current, strict=True):
        group.update(hyper)
    restored = len(saved.get("state", {}))
    log.info("restored optimizer state of %d parameters from %s", restored, path)
    return restored


def staging_dir(out_dir: Path) -> Path:
    """A fresh temporary sibling of ``out_dir`` (same filesystem, so the final rename is atomic)."""
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_checkpoint(out_dir: str | Path, save_files: Callable[[Path], None],
                     state: dict[str, Any]) -> Path:
    """Assemble a checkpoint in a temporary sibling, then rename it onto ``out_dir``.

    ``save_files(folder)`` writes the model, tokenizer and optimizer into the folder;
    ``train_state.json`` is written after it. An existing ``out_dir`` is replaced.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        save_files(tmp)
        atomic_write_json(tmp / STATE_FILE, state)
        old = None
        if out.exists():
            old = out.parent / f".old-{out.name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_complete_checkpoint(folder: str | Path) -> bool:
    """True when ``folder`` holds a finished stage checkpoint (its train_state.json exists)."""
    folder = Path(folder)
    return (folder / STATE_FILE).exists() and (folder / "config.json").exists()
