"""Trajectory store: Parquet keyed by prompt id, written in parts, merged, manifest last.

Layout of a set folder (``rollouts/pool``, ``rollouts/targets/<name>``)::

    spec.json            what produced it (checked on resume)
    parts/part-00003.parquet   one file per chunk of prompts, each written atomically
    parts/part-00003.parquet.json   its done record: rows, bytes, SHA-256 (written before the part)
    rollouts.parquet     all rows in pool order (after the last part)
    manifest.json        written last: its presence means "complete"; keeps the rows of every
                         chunk and the bytes and SHA-256 of rollouts.parquet

Integrity: a resumed set checks every part against its record, and a part that differs (or
cannot be read) is said and sampled again (its chunk has a fixed seed: the same rows). A complete
set whose rollouts.parquet no longer matches the manifest is not complete: a command that samples
says so and samples the set again; a reader stops with one line naming the file and the fix.
Disk space: a full disk while writing a part is one line (nothing half-written is kept), and the
merge checks first that the merged file fits.

One row per prompt: id, source, level, prompt_ids, response_ids [K][len], response_text [K],
rewards [K], logprobs [K][len] (beta's fp32 log-probs of the sampled tokens,
``rollout.logprob_pass``), pass_rate, n_tokens, sampling (K can differ between prompts with
adaptive K, ``rollout.k_first``), embedding (the prompt's, for the selection analysis).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cropi import __version__
from cropi.utils.errors import CropiError, check_stop, stop_requested
from cropi.utils.io import (atomic_path, atomic_write_json, check_free, damaged, file_record, read_json,
                            record_mismatch)

log = logging.getLogger(__name__)
_FIX = ("rerun `cropi rollout` (or any command that samples) on this run: it samples the set again "
        "with the same seeds")

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
    ("embedding", pa.list_(pa.float32())),
])
"""``sampling``: why the prompt has as many responses as it has (``all``, ``stopped`` or
``extended``: :func:`cropi.rollout.collect.sample_group`); ``embedding``: beta's mean last hidden
state over the prompt's tokens, kept where the sampling computed it (fp32 sampling by cropi's decode
loop), else null. Both are missing in stores of earlier versions."""


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
    embedding: np.ndarray | None = None  # [hidden] float32, where the sampling computed it

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
    """Create ``folder`` with ``spec.json``, or check that an existing one has the same spec.
    An existing folder is checked for damage: parts that differ from their record, and a merged
    file that differs from the manifest, are removed (with a warning) so they are sampled again."""
    spec_path = folder / "spec.json"
    if spec_path.exists() and not overwrite:
        stored = read_json(spec_path, fix="delete the folder and rerun: the set is sampled again")
        canon = json.loads(json.dumps(spec, default=str))
        if stored != canon:
            raise CropiError(
                f"was produced with a different spec ({_spec_diff(stored, canon)})", file=folder,
                fix="pass --overwrite to recompute, or use another output folder",
            )
        _drop_damaged(folder)
        return
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_path, spec)


def part_path(folder: Path, chunk: int) -> Path:
    return folder / "parts" / f"part-{chunk:05d}.parquet"


def part_record_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def write_part(folder: Path, chunk: int, rows: list[dict[str, Any]]) -> None:
    """Write chunk ``chunk``'s rows as its part, its done record first (so a part never exists
    without one). A safe point: a requested stop ends the work after it."""
    path = part_path(folder, chunk)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
        atomic_write_json(part_record_path(path), {"rows": len(rows), **file_record(tmp)})
    if stop_requested():
        n = len(list((folder / "parts").glob("part-*.parquet")))
        check_stop(f"after {n} chunk(s) of beta's rollouts in {folder} (the rest is sampled on resume)")


def part_problem(part: Path) -> str | None:
    """Why a part cannot be trusted (no record, a size or SHA-256 that differs, unreadable), or
    None."""
    try:
        record = read_json(part_record_path(part))
    except FileNotFoundError:
        return "it has no done record"
    except ValueError:
        return "its done record is damaged"
    why = record_mismatch(part, record)
    if why is not None:
        return why
    try:
        if pq.read_metadata(part).num_rows != int(record.get("rows", -1)):
            return "its row count differs from its record"
    except (OSError, ValueError, pa.ArrowException) as exc:
        return f"it cannot be read ({' '.join(str(exc).split())[:120]})"
    return None


def merged_problem(folder: Path) -> str | None:
    """Why a complete set's rollouts.parquet cannot be trusted (it differs from the manifest's
    record), or None (also for manifests written before records were kept)."""
    try:
        manifest = read_json(folder / "manifest.json")
    except ValueError:
        return "its manifest.json is damaged"
    record = manifest.get("file") if isinstance(manifest, dict) else None
    if not isinstance(record, dict):
        return None
    why = record_mismatch(folder / "rollouts.parquet", record)
    return None if why is None else f"rollouts.parquet: {why}"


def _drop_damaged(folder: Path) -> None:
    if (folder / "manifest.json").exists():
        why = merged_problem(folder)
        if why is not None:
            log.warning("%s: %s (damaged): sampling the set again (same seeds, same rows)", folder, why)
            (folder / "manifest.json").unlink(missing_ok=True)
            (folder / "rollouts.parquet").unlink(missing_ok=True)
        return
    for part in sorted((folder / "parts").glob("part-*.parquet")):
        why = part_problem(part)
        if why is not None:
            log.warning("%s: %s (damaged or cut short): sampling that chunk again", part, why)
            part.unlink(missing_ok=True)
            part_record_path(part).unlink(missing_ok=True)


def _read_part(path: Path) -> pa.Table:
    try:
        return _with_schema(pq.read_table(path))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise damaged(path, exc, fix=_FIX) from None


def finalize(folder: Path, n_chunks: int, manifest: dict[str, Any]) -> None:
    """Merge the parts in chunk order into rollouts.parquet, then write the manifest (with the
    rows of every chunk and the merged file's record)."""
    parts = [part_path(folder, c) for c in range(n_chunks)]
    check_free(folder, int(1.1 * sum(p.stat().st_size for p in parts)) + 2**20,
               "merging beta's rollouts into rollouts.parquet")
    tables = [_read_part(p) for p in parts]
    table = pa.concat_tables(tables)
    with atomic_path(folder / "rollouts.parquet") as tmp:
        pq.write_table(table, tmp)
    rewards = table.column("pass_rate").to_numpy()
    manifest = {
        "format_version": FORMAT_VERSION, "cropi_version": __version__,
        "n_prompts": table.num_rows, "mean_pass_rate": float(np.mean(rewards)) if len(rewards) else 0.0,
        "n_tokens": int(np.sum(table.column("n_tokens").to_numpy())), **manifest,
        "chunks": [t.num_rows for t in tables], "file": file_record(folder / "rollouts.parquet"),
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
    """The set is complete and its rollouts.parquet matches the manifest's record."""
    if not ((folder / "manifest.json").exists() and (folder / "rollouts.parquet").exists()):
        return False
    return merged_problem(folder) is None


def load_rollouts(folder: str | Path) -> list[PromptRollouts]:
    """All prompts of a complete set, in pool order. A damaged file: one line naming it."""
    folder = Path(folder)
    if (folder / "manifest.json").exists() and (folder / "rollouts.parquet").exists():
        why = merged_problem(folder)
        if why is not None:
            raise damaged(folder / "rollouts.parquet", f"{why}, damaged or changed since it was written", fix=_FIX)
    if not is_complete(folder):
        raise CropiError("holds no complete rollouts (no manifest.json)", file=folder,
                         fix="run `cropi rollout` first, or let it finish")
    try:
        table = pq.read_table(folder / "rollouts.parquet")
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise damaged(folder / "rollouts.parquet", exc, fix=_FIX) from None
    out = []
    for row in table.to_pylist():
        out.append(PromptRollouts(
            id=row["id"], source=row["source"], level=row["level"], prompt_ids=row["prompt_ids"],
            response_ids=row["response_ids"], response_text=row["response_text"],
            rewards=np.asarray(row["rewards"], dtype=np.float32),
            logprobs=[np.asarray(lp, dtype=np.float32) for lp in row["logprobs"]],
            embedding=np.asarray(row["embedding"], dtype=np.float32) if row.get("embedding") is not None else None,
        ))
    return out
