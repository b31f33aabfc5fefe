"""A curriculum sampler for verl that serves the current stage's selection of a cropi run.

verl 0.7.x (and earlier) builds it from the data config::

    data.sampler.class_path=pkg://cropi.integrations.verl  data.sampler.class_name=CropiCurriculumSampler
    +data.sampler.cropi_run_dir=/abs/path/runs/NAME  data.dataloader_num_workers=0

and calls ``update(batch=...)`` after every training step. verl >= 0.8 dropped that hook: pass the
sampler as ``RayPPOTrainer(train_sampler=...)`` and call ``update()`` yourself. Without verl the
class is a plain ``torch.utils.data.Sampler`` with the same constructor.

Options under ``data.sampler``: ``cropi_run_dir`` (required), ``cropi_stage`` (pin one stage;
default: the latest stage with a ``selection.json``, re-checked by ``update``), ``cropi_seed``
(default ``data.seed``, else 0). Dataset rows map to cropi ids by ``extra_info.cropi_id``, else
by the verl converter's rule (``<data_source>-<extra_info.index>``), so the train file must hold
every selected prompt (:func:`cropi.integrations.verl.export_pool_verl` writes the whole pool).

The iterator never ends: it walks a seeded permutation of the selection, reshuffles for the next
cycle, and moves to a newer stage's selection as soon as ``update`` sees one. verl stops at
``trainer.total_training_steps``; ``len()`` is the current selection's size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any

import numpy as np

from cropi.curriculum.rundir import RunDir, selection_stages
from cropi.data.converters import verl_row_id
from cropi.select import read_selection
from cropi.utils.errors import CropiError

log = logging.getLogger(__name__)

try:  # verl <= 0.7: its trainer asserts isinstance(sampler, AbstractSampler) and calls update()
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler as _Base

    VERL_BASE = True
except ImportError:  # no verl, or a verl without the curriculum interface (>= 0.8)
    from torch.utils.data import Sampler as _Base  # type: ignore[assignment]

    VERL_BASE = False


def _get(cfg: Any, key: str) -> Any:
    """``cfg[key]`` of a dict or an OmegaConf DictConfig, None when absent."""
    if cfg is None:
        return None
    if hasattr(cfg, "get"):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _rows(data_source: Sized) -> list[dict[str, Any]]:
    """The id-bearing columns of every dataset row, in dataset order (no tokenisation)."""
    frame = getattr(data_source, "dataframe", None)  # verl's RLHFDataset: an HF datasets.Dataset
    if frame is not None and hasattr(frame, "column_names"):
        cols = [c for c in ("data_source", "id", "extra_info") if c in frame.column_names]
        return list(frame.select_columns(cols).to_list())
    return [data_source[i] for i in range(len(data_source))]  # type: ignore[index]


def dataset_ids(data_source: Sized) -> dict[str, int]:
    """cropi id -> dataset index for every row of a verl dataset."""
    positions: dict[str, int] = {}
    for pos, row in enumerate(_rows(data_source)):
        if not isinstance(row, dict):
            raise CropiError(f"dataset row {pos} is a {type(row).__name__}, not a mapping",
                             fix="give the sampler verl's RLHFDataset (rows with extra_info)")
        rid = verl_row_id(row, pos + 1)
        if rid in positions:
            raise CropiError(f"dataset rows {positions[rid]} and {pos} both map to cropi id "
                             f"{rid!r}", field="extra_info.cropi_id",
                             fix="write the train file with cropi.integrations.verl.export_pool_verl")
        positions[rid] = pos
    return positions


class CropiCurriculumSampler(_Base):  # type: ignore[misc, valid-type]
    """Dataset indices of the current stage's selection, shuffled per (seed, stage, cycle)."""

    def __init__(self, data_source: Sized, data_config: Any) -> None:
        opts = _get(data_config, "sampler")
        run_dir = _get(opts, "cropi_run_dir")
        if not run_dir:
            raise CropiError("is not set", field="data.sampler.cropi_run_dir",
                             fix="+data.sampler.cropi_run_dir=/abs/path/to/runs/NAME")
        workers = _get(data_config, "dataloader_num_workers")
        if workers not in (None, 0):
            raise CropiError(f"is {workers}", field="data.dataloader_num_workers",
                             fix="set it to 0 so no batch is drawn from a stale selection")
        self.run = RunDir(Path(str(run_dir)).expanduser())
        if not self.run.root.is_dir():
            raise CropiError("does not exist", file=self.run.root,
                             field="data.sampler.cropi_run_dir",
                             fix="give the absolute path of a cropi run directory")
        stage = _get(opts, "cropi_stage")
        self.pinned: int | None = None if stage is None else int(stage)
        seed = _get(opts, "cropi_seed")
        seed = _get(data_config, "seed") if seed is None else seed
        self.seed = int(seed or 0)
        self.data_source = data_source
        self._positions = dataset_ids(data_source)
        self.stage = -1
        self.indices: list[int] = []  # dataset indices of the selection, in selection order
        self._cycle = 0
        self._offset = 0
        self._version = 0
        self._switch(self._target_stage())

    # --- stages -------------------------------------------------------------------------
    def _target_stage(self) -> int:
        if self.pinned is not None:
            return self.pinned
        stages = selection_stages(self.run.root)
        if not stages:
            raise CropiError("has no stage with a selection.json", file=self.run.root / "stages",
                             fix="run the selection step first, or set data.sampler.cropi_stage")
        return stages[-1]

    def _switch(self, stage: int) -> None:
        path = self.run.selection(stage)
        ids = read_selection(path)["ids"]
        if not ids:
            raise CropiError("selects no prompts", file=path, field="ids")
        missing = [i for i in ids if i not in self._positions]
        if missing:
            raise CropiError(
                f"{len(missing)} of {len(ids)} selected ids are not in the verl dataset "
                f"(e.g. {missing[:3]})", file=path, field="ids",
                fix="train on a file written by cropi.integrations.verl.export_pool_verl for this run")
        self.indices = [self._positions[i] for i in ids]
        self.stage, self._cycle, self._offset = stage, 0, 0
        self._version += 1
        log.info("cropi sampler: stage %d selection, %d prompts", stage, len(ids))

    def update(self, batch: Any = None) -> None:
        """After a training step: move to a newer stage's selection when one has appeared."""
        if self.pinned is not None:
            return
        stages = selection_stages(self.run.root)
        if stages and stages[-1] > self.stage:
            self._switch(stages[-1])

    # --- sampling -----------------------------------------------------------------------
    def order(self, cycle: int) -> list[int]:
        """Dataset indices of cycle ``cycle`` of the current stage (a seeded permutation)."""
        rng = np.random.default_rng([self.seed, self.stage, cycle])
        return [self.indices[i] for i in rng.permutation(len(self.indices))]

    def __iter__(self) -> Iterator[int]:
        while True:
            version, order = self._version, self.order(self._cycle)
            while self._offset < len(order) and version == self._version:
                self._offset += 1  # before the yield: state_dict() then counts what was drawn
                yield order[self._offset - 1]
            if version == self._version:
                self._cycle, self._offset = self._cycle + 1, 0

    def __len__(self) -> int:
        return len(self.indices)

    # --- resume (torchdata's StatefulDataLoader saves and restores these) --------------
    def state_dict(self) -> dict[str, int]:
        return {"stage": self.stage, "cycle": self._cycle, "offset": self._offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._switch(int(state["stage"]))
        self._cycle, self._offset = int(state["cycle"]), int(state["offset"])
