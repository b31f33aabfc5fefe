"""What-if rollouts: a finished draw's stored responses cut to fewer per prompt.

Beta's K responses to a prompt are independent draws, so the first k of them are a draw of k. A
copy of a run's rollouts folder with every set cut that way prices a cheaper sampling setting (K,
adaptive K, the targets' K) on the *same* responses: the picks then differ from the full draw's
only through the setting, with no sampling noise between them. Cut sets keep the run's spec (the
run that scores them keeps the full draw's config), and their manifests are rewritten so the
integrity checks hold.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cropi.utils.io import atomic_path, atomic_write_json, file_record, read_json

LIST_COLUMNS = ("response_ids", "response_text", "rewards", "logprobs")


def cut_row(row: dict, k: int, k_first: int | None = None) -> dict:
    """``row`` (a rollouts.parquet row) with its first ``k`` responses; with ``k_first``, only
    the first ``k_first`` when their rewards are all equal (``sampling``: stopped / extended, as
    adaptive sampling would record them)."""
    n = len(row["rewards"])
    keep, why = min(k, n), "all"
    if k_first is not None and k_first < keep:
        first = row["rewards"][:k_first]
        if len(set(first)) == 1:
            keep, why = k_first, "stopped"
        else:
            why = "extended"
    out = dict(row)
    for col in LIST_COLUMNS:
        out[col] = list(row[col][:keep])
    out["pass_rate"] = float(np.mean(out["rewards"])) if keep else 0.0
    out["n_tokens"] = int(sum(len(r) for r in out["response_ids"]))
    out["sampling"] = why
    return out


def cut_set(src: Path, dest: Path, k: int, k_first: int | None = None) -> dict[str, int]:
    """Write ``src`` (one complete set folder) cut to ``k`` responses per prompt into ``dest``;
    returns the responses and generated tokens before and after."""
    table = pq.read_table(src / "rollouts.parquet")
    rows = table.to_pylist()
    cut = [cut_row(r, k, k_first) for r in rows]
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / "rollouts.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(cut, schema=table.schema), tmp)
    if (src / "spec.json").exists():
        shutil.copyfile(src / "spec.json", dest / "spec.json")
    manifest = read_json(src / "manifest.json")
    manifest.update(n_tokens=int(sum(r["n_tokens"] for r in cut)),
                    mean_pass_rate=float(np.mean([r["pass_rate"] for r in cut])) if cut else 0.0,
                    cut={"k": k, "k_first": k_first}, file=file_record(dest / "rollouts.parquet"))
    atomic_write_json(dest / "manifest.json", manifest)
    return {"responses_full": int(sum(len(r["rewards"]) for r in rows)),
            "responses": int(sum(len(r["rewards"]) for r in cut)),
            "tokens_full": int(sum(r["n_tokens"] for r in rows)),
            "tokens": int(sum(r["n_tokens"] for r in cut))}


def cut_rollouts(src_root: Path, dest_root: Path, k_pool: int, k_first: int | None,
                 k_target: int) -> dict[str, dict[str, int]]:
    """A run's rollouts folder cut: the pool to ``k_pool``, every target set to ``k_target``, both
    adaptive with ``k_first`` (as ``rollout.k_first`` samples both); other entries (beta's evaluation, embeddings) hard-linked as they
    are. Returns :func:`cut_set`'s counts per set."""
    counts: dict[str, dict[str, int]] = {}
    for manifest in sorted(src_root.rglob("manifest.json")):
        folder = manifest.parent
        name = folder.relative_to(src_root).as_posix()
        if name == "pool":
            counts[name] = cut_set(folder, dest_root / name, k_pool, k_first)
        elif name.startswith("targets/"):
            counts[name] = cut_set(folder, dest_root / name, k_target, k_first)
    for entry in src_root.iterdir():
        dest = dest_root / entry.name
        if entry.name in ("pool", "targets") or dest.exists():
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest, copy_function=os.link)
        else:
            os.link(entry, dest)
    return counts
