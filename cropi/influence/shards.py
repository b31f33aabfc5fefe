"""Sharded scoring's stores: :func:`shard_ids` splits a run's prompt ids into contiguous ranges,
each scored into an ordinary :class:`~cropi.influence.features.FeatureStore`; :func:`merge_stores`
joins the complete shards into one store whose features are byte-identical to an unsharded run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cropi.influence.features import FeatureStore
from cropi.influence.store_format import check_ids, normalise_spec, spec_mismatch
from cropi.utils.errors import CropiError


def shard_ids(ids: Sequence[str], n_shards: int, shard_index: int) -> list[str]:
    """Contiguous range of ``ids`` for shard ``shard_index`` of ``n_shards``.

    Sizes differ by at most one (the first ``len(ids) % n_shards`` shards get one more id); the
    shards, concatenated in index order, give back ``ids``.
    """
    if n_shards < 1 or not 0 <= shard_index < n_shards:
        raise CropiError(f"shard {shard_index} of {n_shards} does not exist",
                         fix="use n_shards >= 1 and 0 <= shard_index < n_shards")
    base, extra = divmod(len(ids), n_shards)
    start = shard_index * base + min(shard_index, extra)
    stop = start + base + (1 if shard_index < extra else 0)
    return [str(i) for i in ids[start:stop]]


def merge_stores(shard_paths: Sequence[str | Path], out_path: str | Path, ids: Sequence[str],
                 spec: dict[str, Any], overwrite: bool = False) -> FeatureStore:
    """Merge complete shard stores into one complete store at ``out_path`` in the order of ``ids``.

    Every shard must be complete and carry ``spec`` (and the same k and dtype); every id must be in
    exactly one shard. The merged features are byte-identical to those of an unsharded run.
    """
    ids = check_ids(ids, Path(out_path))
    shards = [FeatureStore.load(p) for p in shard_paths]
    if not shards:
        raise CropiError("no shard stores to merge", file=out_path)
    given = normalise_spec(spec)
    for shard in shards:
        if shard.spec != given:
            raise spec_mismatch(shard.path, shard.spec, given, "this shard")
        if (shard.k, shard.dtype) != (shards[0].k, shards[0].dtype):
            raise CropiError(f"k={shard.k} {shard.dtype} differs from shard {shards[0].path}: "
                             f"k={shards[0].k} {shards[0].dtype}", file=shard.path)
    _check_coverage(shards, ids)
    out = FeatureStore.open(out_path, ids, shards[0].k, shards[0].dtype, spec, overwrite=overwrite)
    if out.pending():
        for shard in shards:
            for start, rows, zero in shard.chunks(raw=True):
                out.write(shard.ids[start:start + len(rows)], rows, zero)
    out.finalize()
    return out


def _check_coverage(shards: Sequence[FeatureStore], ids: list[str]) -> None:
    owner: dict[str, Path] = {}
    for shard in shards:
        for id_ in shard.ids:
            if id_ in owner:
                raise CropiError(f"prompt id {id_!r} is in two shards ({owner[id_]})", file=shard.path,
                                 fix="shards must come from shard_ids over the same id list")
            owner[id_] = shard.path
    wanted = set(ids)
    extra = [i for i in owner if i not in wanted]
    missing = [i for i in ids if i not in owner]
    if missing or extra:
        raise CropiError(f"shards do not cover the id list: {len(missing)} missing "
                         f"(e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})",
                         fix="merge every shard of the same run, and nothing else")
