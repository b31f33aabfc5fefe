"""Trajectory store: Parquet keyed by prompt id, written in parts, merged, manifest last.

Layout of a set folder (``rollouts/pool``, ``rollouts/targets/<name>``)::

    spec.json            what produced it (checked on resume)
    parts/part-00003.parquet   one file per chunk of prompts, each written atomically
    rollouts.parquet     all rows in pool order (after the last part)
    manifest.json        written last: its presence means "complete"

One row per prompt: id, source, level, prompt_ids, response_ids [K][len], response_text [K],
rewards [K], logprobs [K][len] (beta's teacher-forced fp32 log-probs), pass_rate, n_tokens,
sampling (K can differ between prompts with adaptive K, ``rollout.k_first``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cropi import __version__
from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_path, atomic_write_json, read_json

FORMAT_VERSION = 1

SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("level", pa.string()),
    ("prompt_ids", pa.list_(pa.int32())),
    ("response_ids", pa.list_(pa.list_(pa.int32()))),
    ("response_text", pa.list_(pa.string())),
    ("rewards", pa.list_(pa.float32())),
    ("logprobs", pa.list_(pa.list_(pa.float32()))),
    ("pass_rate", pa.float64()), ("n_tokens", pa.int64()),
    ("sampling", pa.string()),
])
"""``sampling``: why the prompt has as many responses as it has (``all``, ``stopped`` or
``extended``: :func:`cropi.rollout.collect.sample_group`); missing in stores of earlier versions."""


@dataclass
class PromptRollouts:
    id: str
    source: str
    level: str | None
    prompt_ids: list[int]
    response_ids: list[list[int]]
    response_text: list[str]
    rewards: np.ndarray  # [K] float32
    logprobs: list[np.ndarray]  # K x [len] float32

    @property
    def pass_rate(self) -> float:
        return float(np.mean(self.rewards))

    @property
    def zero_grad(self) -> bool:
        return bool(np.all(self.rewards == self.rewards[0]))


def _spec_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: stored={a.get(k)!r} current={b.get(k)!r}" for k in keys)


def prepare_dir(folder: Path, spec: dict[str, Any], overwrite: bool = False) -> None:
    """Create ``folder`` with ``spec.json``, or check that an existing one has the same spec."""
    spec_path = folder / "spec.json"
    if spec_path.exists() and not overwrite:
        stored = read_json(spec_path)
        canon = json.loads(json.dumps(spec, default=str))
        if stored != canon:
            raise CropiError(
                f"was produced with a different spec ({_spec_diff(stored, canon)})", file=folder,
                fix="pass --overwrite to recompute, or use another output folder",
            )
        return
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_path, spec)


def part_path(folder: Path, chunk: int) -> Path:
    return folder / "parts" / f"part-{chunk:05d}.parquet"


def write_part(folder: Path, chunk: int, rows: list[dict[str, Any]]) -> None:
    with atomic_path(part_path(folder, chunk)) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)


def finalize(folder: Path, n_chunks: int, manifest: dict[str, Any]) -> None:
    """Merge the parts in chunk order into rollouts.parquet, then write the manifest."""
    tables = [_with_schema(pq.read_table(part_path(folder, c))) for c in range(n_chunks)]
    table = pa.concat_tables(tables)
    with atomic_path(folder / "rollouts.parquet") as tmp:
        pq.write_table(table, tmp)
    rewards = table.column("pass_rate").to_numpy()
    manifest = {
        "format_version": FORMAT_VERSION, "cropi_version": __version__,
        "n_prompts": table.num_rows, "mean_pass_rate": float(np.mean(rewards)) if len(rewards) else 0.0,
        "n_tokens": int(np.sum(table.column("n_tokens").to_numpy())), **manifest,
    }
    atomic_write_json(folder / "manifest.json", manifest)
    shutil.rmtree(folder / "parts", ignore_errors=True)


def _with_schema(table: pa.Table) -> pa.Table:
    """A part in :data:`SCHEMA` (a part written by an earlier version lacks ``sampling``)."""
    for f in SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(SCHEMA.names).cast(SCHEMA)


def is_complete(folder: Path) -> bool:
    return (folder / "manifest.json").exists() and (folder / "rollouts.parquet").exists()


def load_rollouts(folder: str | Path) -> list[PromptRollouts]:
    """All prompts of a complete set, in pool order."""
    folder = Path(folder)
    if not is_complete(folder):
        raise CropiError("holds no complete rollouts (no manifest.json)", file=folder,
                         fix="run `cropi rollout` first, or let it finish")
    out = []
    for row in pq.read_table(folder / "rollouts.parquet").to_pylist():
        out.append(PromptRollouts(
            id=row["id"], source=row["source"], level=row["level"], prompt_ids=row["prompt_ids"],
            response_ids=row["response_ids"], response_text=row["response_text"],
            rewards=np.asarray(row["rewards"], dtype=np.float32),
            logprobs=[np.asarray(lp, dtype=np.float32) for lp in row["logprobs"]],
        ))
    return out
