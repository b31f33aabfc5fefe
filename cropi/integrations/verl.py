"""verl integration: export a run's pool or a stage's selection as verl RL parquet, and a
curriculum sampler that serves the current stage's selection to verl's trainer.

verl rows (``RLHFDataset``)::

    data_source   str                       verl's reward function dispatches on it
    prompt        [{"role", "content"}, ...] chat messages (the run's system prompt prepended)
    ability       str                       meta["ability"], else the record's verifier
    reward_model  {"style": "rule", "ground_truth": answer}
    extra_info    {"index", "split", "cropi_id", "cropi_source", "cropi_level", "cropi_meta",
                   "cropi_stage"}            cropi_meta is the record's meta as a JSON string

Loading such a file back with the ``verl`` converter gives the same ids, answers, sources,
levels and meta (:func:`cropi.data.converters.verl_row_id`).

The sampler lives in :mod:`cropi.integrations.verl_sampler` (it imports torch, and verl when installed);
``CropiCurriculumSampler`` is reachable from this module too, so verl's config can name it as
``data.sampler.class_path=pkg://cropi.integrations.verl`` and ``class_name=CropiCurriculumSampler``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cropi.config import load_config
from cropi.curriculum.rundir import RunDir, selection_stages
from cropi.data.schema import PromptRecord
from cropi.data.sets import load_sets
from cropi.model.template import with_system_prompt
from cropi.select import read_selection
from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_path

log = logging.getLogger(__name__)



def _schema() -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(message)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([
            ("index", pa.int64()), ("split", pa.string()), ("cropi_id", pa.string()),
            ("cropi_source", pa.string()), ("cropi_level", pa.string()),
            ("cropi_meta", pa.string()), ("cropi_stage", pa.int64()),
        ])),
    ])


def verl_row(rec: PromptRecord, index: int, data_source: str = "cropi",
             stage: int | None = None, system_prompt: str | None = None) -> dict[str, Any]:
    """One verl RL row for ``rec``; ``index`` is its position in the written file."""
    messages = with_system_prompt(rec.prompt, system_prompt)
    return {
        "data_source": data_source,
        "prompt": messages,
        "ability": str(rec.meta.get("ability") or rec.verifier),
        "reward_model": {"style": "rule", "ground_truth": rec.answer},
        "extra_info": {"index": index, "split": "train", "cropi_id": rec.id,
                       "cropi_source": rec.source, "cropi_level": rec.level,
                       "cropi_meta": json.dumps(rec.meta, sort_keys=True), "cropi_stage": stage},
    }


def write_verl_parquet(records: Sequence[PromptRecord], out: str | Path, data_source: str = "cropi",
                       stage: int | None = None, system_prompt: str | None = None) -> int:
    """Write ``records`` in order as verl parquet, atomically. Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise CropiError(f"has the extension {out.suffix!r}", file=out,
                         fix="verl reads .parquet files: name the output e.g. train.parquet")
    if not data_source.strip():
        raise CropiError("is empty", field="data_source",
                         fix="name the data source verl's reward function expects")
    rows = [verl_row(r, i, data_source, stage, system_prompt) for i, r in enumerate(records)]
    table = pa.Table.from_pylist(rows, schema=_schema())
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    log.info("wrote %d verl rows (data_source %s) to %s", len(rows), data_source, out)
    return len(rows)


def _run_config(run: RunDir) -> Any:
    path = run.root / "config.yaml"
    if not path.exists():
        raise CropiError("has no config.yaml", file=run.root,
                         fix="pass the folder of a cropi run (it holds config.yaml and stages/)")
    return load_config(path)


def export_pool_verl(run_dir: Path, out: Path, data_source: str = "cropi") -> int:
    """Write a run's whole pool (pool order) as verl parquet: the train file for the sampler."""
    run = RunDir(run_dir)
    cfg = _run_config(run)
    pool = load_sets(cfg.data).pool
    return write_verl_parquet(pool, out, data_source, None, cfg.model.system_prompt)


def export_selection_verl(run_dir: Path, stage: int, out: Path, data_source: str = "cropi") -> int:
    """Write stage ``stage``'s selection of a run as verl parquet, in the selection's order.

    Records come from the run's pool (its ``config.yaml`` data section). Returns the row count.
    """
    run = RunDir(run_dir)
    path = run.selection(stage)
    if not path.exists():
        have = selection_stages(run.root)
        raise CropiError(f"stage {stage} has no selection", file=path,
                         fix=f"stages with a selection: {have}" if have else
                         "run the selection step first")
    ids = read_selection(path)["ids"]
    if not ids:
        raise CropiError("selects no prompts", file=path, field="ids",
                         fix="rerun the selection with a budget above 0")
    cfg = _run_config(run)
    by_id = {r.id: r for r in load_sets(cfg.data).pool}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise CropiError(
            f"{len(missing)} of {len(ids)} selected ids are not in the run's pool "
            f"(e.g. {missing[:3]})", file=path, field="ids",
            fix="the data section of the run's config.yaml must name the pool it selected from")
    records = [by_id[i] for i in ids]
    return write_verl_parquet(records, out, data_source, stage, cfg.model.system_prompt)


def __getattr__(name: str) -> Any:
    """``CropiCurriculumSampler`` on first use, so exports never import torch or verl."""
    if name == "CropiCurriculumSampler":
        from cropi.integrations.verl_sampler import CropiCurriculumSampler

        return CropiCurriculumSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
