"""Feature store: projected gradients ``[n_prompts, k]`` for an ordered list of prompt ids.

A store is a folder::

    spec.json       what produced the features (written when the store is created, before any row)
    ids.json        the prompt ids, in row order
    features.npy    memmap [n, k], fp16 or fp32
    zero.npy        memmap bool [n]: prompt's gradient is exactly zero (all rewards equal)
    done.npy        memmap bool [n]: row written (flushed after the features of every batch)
    manifest.json   written LAST by :meth:`FeatureStore.finalize`; its presence means "complete"

Resuming: :meth:`FeatureStore.open` on an existing folder with the same spec and ids reopens it and
:meth:`FeatureStore.pending` lists the ids still to compute. Rows are flushed before their ``done``
flags, so a process killed at any instant (``kill -9``) never leaves a row marked done that was not
written; a row written without its flag is simply computed again.

Sharding: :func:`shard_ids` splits the ids into contiguous ranges; each shard is an ordinary store
over its ids; :func:`merge_stores` joins complete shards into one store whose features are
byte-identical to an unsharded run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cropi import __version__
from cropi.utils.errors import CropiError
from cropi.utils.hashing import fingerprint, stable_json
from cropi.utils.io import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES: dict[str, np.dtype] = {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32)}
_FILES = ("manifest.json", "spec.json", "ids.json", "features.npy", "zero.npy", "done.npy")
_MERGE_CHUNK_ROWS = 4096


def dtype_name(dtype: str | np.dtype | type) -> str:
    """Normalise ``"fp16"``/``"float16"``/``np.float16`` (and fp32 alike) to ``"fp16"``/``"fp32"``."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    for name, candidate in DTYPES.items():
        if np_dtype == candidate:
            return name
    raise CropiError(f"unsupported feature dtype {dtype!r}", field="projection.store_dtype",
                     fix="use fp16 or fp32")


def bytes_per_prompt(k: int, dtype: str | np.dtype | type = "fp16") -> int:
    """Storage of one prompt's features: ``k * itemsize`` (k=8192 in fp16 -> 16 KiB)."""
    return int(k) * DTYPES[dtype_name(dtype)].itemsize


def store_bytes(n: int, k: int, dtype: str | np.dtype | type = "fp16") -> int:
    """Storage of the features of ``n`` prompts (the bitmaps and json files are negligible)."""
    return int(n) * bytes_per_prompt(k, dtype)


def _normalise_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as it reads back from JSON (tuples become lists, keys become strings...)."""
    return json.loads(stable_json(spec))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def spec_diff(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two (nested) specs, sorted."""
    a, b = _flatten(stored), _flatten(given)
    return sorted(key for key in set(a) | set(b) if a.get(key, "<missing>") != b.get(key, "<missing>"))


def _spec_mismatch(path: Path, stored: dict[str, Any], given: dict[str, Any], what: str) -> CropiError:
    a, b = _flatten(stored), _flatten(given)
    diffs = "; ".join(
        f"{key}: stored={a.get(key, '<missing>')!r} given={b.get(key, '<missing>')!r}"
        for key in spec_diff(stored, given)
    )
    return CropiError(
        f"{what} was produced with a different spec. Differing keys: {diffs}. "
        f"Stored spec: {stable_json(stored)}. Given spec: {stable_json(given)}",
        file=path,
        fix="pass --overwrite to recompute, or use another run directory",
    )


def _store_meta(spec: dict[str, Any], k: int, dtype: str, n: int) -> dict[str, Any]:
    return {"spec": _normalise_spec(spec), "k": int(k), "dtype": dtype, "n": int(n)}


def _check_ids(ids: Sequence[str], where: Path | None = None) -> list[str]:
    ids = [str(i) for i in ids]
    seen: set[str] = set()
    for id_ in ids:
        if id_ in seen:
            raise CropiError(f"prompt id {id_!r} appears more than once", file=where,
                             fix="prompt ids must be unique")
        seen.add(id_)
    return ids


def _create_array(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Create a zero-filled ``.npy`` atomically (a killed process never leaves a torn header)."""
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        arr.flush()
        del arr


def _wipe(path: Path) -> None:
    """Remove the store's own files (and stray temporaries); never anything else."""
    for name in _FILES:
        (path / name).unlink(missing_ok=True)
    for tmp in path.glob(".tmp-*"):
        tmp.unlink(missing_ok=True)


class FeatureStore:
    """Projected gradients ``[n, k]`` of an ordered id list, on disk. Use :meth:`open` or :meth:`load`."""

    def __init__(self, path: Path, ids: list[str], k: int, dtype: str, spec: dict[str, Any],
                 readonly: bool) -> None:
        self.path, self.ids, self.k, self.dtype, self.spec = path, ids, k, dtype, spec
        self.readonly = readonly
        self._pos = {id_: i for i, id_ in enumerate(ids)}
        mode = "r" if readonly else "r+"
        self._features = self._open_array("features.npy", (len(ids), k), DTYPES[dtype], mode)
        self._zero = self._open_array("zero.npy", (len(ids),), np.dtype(bool), mode)
        self._done = self._open_array("done.npy", (len(ids),), np.dtype(bool), mode)

    def _open_array(self, name: str, shape: tuple[int, ...], dtype: np.dtype, mode: str) -> np.memmap:
        file = self.path / name
        try:
            arr = np.lib.format.open_memmap(file, mode=mode)
        except (OSError, ValueError) as exc:
            raise CropiError(f"feature store file cannot be opened ({exc})", file=file,
                             fix="pass --overwrite to recompute, or use another run directory") from None
        if arr.shape != shape or arr.dtype != dtype:
            raise CropiError(f"has shape {arr.shape} {arr.dtype}, expected {shape} {dtype}", file=file,
                             fix="the store is damaged: pass --overwrite to recompute it")
        return arr

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def open(cls, path: str | Path, ids: Sequence[str], k: int, dtype: str | np.dtype | type,
             spec: dict[str, Any], overwrite: bool = False) -> FeatureStore:
        """Create the store at ``path``, or reopen it to resume when its spec and ids match.

        ``spec``: what produced the features (model fingerprint, projection spec, dataset
        fingerprint, gradient config, stage...). A different spec, k, dtype or id list raises
        :class:`CropiError` showing both specs; ``overwrite=True`` wipes the store and starts anew.
        """
        path = Path(path)
        ids = _check_ids(ids, path)
        if int(k) < 1:
            raise CropiError(f"k must be >= 1, got {k}", field="projection.k")
        meta = _store_meta(spec, int(k), dtype_name(dtype), len(ids))
        if overwrite and path.exists():
            log.info("overwriting feature store %s", path)
            _wipe(path)
        if (path / "spec.json").exists():
            cls._check_existing(path, meta, ids)
        else:
            cls._create(path, meta, ids)
        return cls(path, ids, meta["k"], meta["dtype"], meta["spec"], readonly=False)

    @staticmethod
    def _check_existing(path: Path, meta: dict[str, Any], ids: list[str]) -> None:
        stored = read_json(path / "spec.json")
        keys = ("spec", "k", "dtype")
        stored_cmp = {key: stored.get(key) for key in keys}
        given_cmp = {key: meta[key] for key in keys}
        if stored_cmp != given_cmp:
            raise _spec_mismatch(path, stored_cmp, given_cmp, "this feature store")
        stored_ids = read_json(path / "ids.json")
        if stored_ids != ids:
            first = next((i for i, (a, b) in enumerate(zip(stored_ids, ids)) if a != b),
                         min(len(stored_ids), len(ids)))
            raise CropiError(
                f"this feature store holds {len(stored_ids)} prompt ids, the caller gave {len(ids)}; "
                f"they first differ at position {first}",
                file=path / "ids.json",
                fix="pass --overwrite to recompute, or use another run directory",
            )

    @staticmethod
    def _create(path: Path, meta: dict[str, Any], ids: list[str]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        _wipe(path)  # leftovers of a creation killed before spec.json
        n, k = meta["n"], meta["k"]
        _create_array(path / "features.npy", (n, k), DTYPES[meta["dtype"]])
        _create_array(path / "zero.npy", (n,), np.dtype(bool))
        _create_array(path / "done.npy", (n,), np.dtype(bool))
        atomic_write_json(path / "ids.json", ids)
        # spec.json last: its presence means the (empty) store is fully initialised
        atomic_write_json(path / "spec.json", {"format_version": FORMAT_VERSION,
                                               "cropi_version": __version__, **meta})
        log.info("created feature store %s: %d prompts x k=%d %s (%.1f MiB)", path, n, k,
                 meta["dtype"], store_bytes(n, k, meta["dtype"]) / 2**20)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStore:
        """Open a complete store read-only (raises if ``manifest.json`` is missing)."""
        path = Path(path)
        if not (path / "manifest.json").exists():
            raise CropiError("is not a complete feature store (manifest.json is missing)", file=path,
                             fix="rerun the scoring step: it resumes where it stopped")
        manifest = read_json(path / "manifest.json")
        ids = read_json(path / "ids.json")
        return cls(path, ids, int(manifest["k"]), manifest["dtype"], manifest["spec"], readonly=True)

    # ----------------------------------------------------------------------------- state
    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def is_complete(self) -> bool:
        """True once :meth:`finalize` wrote ``manifest.json``."""
        return (self.path / "manifest.json").exists()

    @property
    def features(self) -> np.ndarray:
        """Read-only view of the stored features, ``[n, k]`` in the store dtype (no copy)."""
        view = self._features.view(np.ndarray)
        view.flags.writeable = False
        return view

    def n_done(self) -> int:
        return int(np.count_nonzero(self._done))

    def pending(self) -> list[str]:
        """Ids whose row is not written yet, in store order."""
        return [self.ids[i] for i in np.flatnonzero(~np.asarray(self._done))]

    # ----------------------------------------------------------------------------- writing
    def write(self, ids: Sequence[str], feats: np.ndarray, zero: Sequence[bool]) -> None:
        """Write rows ``feats [b, k]`` for ``ids`` (b of them) and mark them done.

        ``zero[i]``: prompt ``ids[i]`` has an exactly zero gradient (all rewards equal); its row is
        stored as zeros and it is excluded from scoring. Features and the zero mask are flushed
        before the ``done`` flags, so a killed process never leaves an unwritten row marked done.
        """
        if self.readonly or self.is_complete:
            raise CropiError("this feature store is complete (finalized); it cannot be written",
                             file=self.path, fix="pass --overwrite to recompute it")
        pos = self._positions(ids)
        rows, zero_arr = self._prepare_rows(ids, feats, zero)
        if not pos.size:
            return
        self._features[pos] = rows
        self._zero[pos] = zero_arr
        self._features.flush()
        self._zero.flush()
        self._done[pos] = True
        self._done.flush()

    def _positions(self, ids: Sequence[str]) -> np.ndarray:
        try:
            pos = np.fromiter((self._pos[str(i)] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise CropiError(f"prompt id {exc.args[0]!r} is not in this feature store",
                             file=self.path / "ids.json") from None
        if np.unique(pos).size != pos.size:
            raise CropiError("the same prompt id appears twice in one write batch", file=self.path)
        return pos

    def _prepare_rows(self, ids: Sequence[str], feats: np.ndarray,
                      zero: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        feats = np.asarray(feats)
        zero_arr = np.asarray(zero, dtype=bool).reshape(-1)
        if feats.shape != (len(ids), self.k) or zero_arr.shape != (len(ids),):
            raise CropiError(f"write got features {feats.shape} and zero {zero_arr.shape} for "
                             f"{len(ids)} ids; expected ({len(ids)}, {self.k}) and ({len(ids)},)",
                             file=self.path)
        if not np.isfinite(feats).all():
            bad = [ids[i] for i in np.flatnonzero(~np.isfinite(feats).all(axis=1))[:5]]
            raise CropiError(f"non-finite features for prompt ids {bad}", file=self.path,
                             fix="check the gradient pass (try gradient.autocast_bf16=false)")
        with np.errstate(over="ignore"):
            rows = feats.astype(DTYPES[self.dtype], copy=True)
        if not np.isfinite(rows).all():
            raise CropiError(f"features overflow {self.dtype} (max |value| "
                             f"{float(np.abs(feats).max()):.3g})", file=self.path,
                             fix="use projection.store_dtype=fp32")
        rows[zero_arr] = 0
        return rows, zero_arr

    def finalize(self) -> None:
        """Write ``manifest.json`` (atomically, last); raises if some rows are still pending."""
        if self.is_complete:
            return
        n_pending = self.n - self.n_done()
        if n_pending:
            raise CropiError(f"cannot finalize: {n_pending} of {self.n} prompts are not written yet",
                             file=self.path, fix="rerun the scoring step to compute the rest")
        self._features.flush()
        self._zero.flush()
        self._done.flush()
        atomic_write_json(self.path / "manifest.json", {
            "format_version": FORMAT_VERSION,
            "cropi_version": __version__,
            "spec": self.spec,
            "n": self.n,
            "k": self.k,
            "dtype": self.dtype,
            "ids_fingerprint": fingerprint(self.ids),
            "counts": {"done": self.n_done(), "zero": int(np.count_nonzero(self._zero))},
            "bytes": store_bytes(self.n, self.k, self.dtype),
        })
        log.info("finalized feature store %s (%d prompts, %d zero-gradient)", self.path, self.n,
                 int(np.count_nonzero(self._zero)))

    # ----------------------------------------------------------------------------- reading
    def read(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(ids, feats float32 [n, k], zero bool [n])`` of a complete store (copies)."""
        if not self.is_complete:
            raise CropiError("cannot read an incomplete feature store (manifest.json is missing)",
                             file=self.path, fix="finish the scoring step (rerun to resume)")
        feats = np.asarray(self._features, dtype=np.float32).copy()
        return list(self.ids), feats, np.asarray(self._zero, dtype=bool).copy()

    def close(self) -> None:
        """Flush and release the memory maps."""
        for arr in (self._features, self._zero, self._done):
            if not self.readonly:
                arr.flush()
        del self._features, self._zero, self._done

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, n={self.n}, k={self.k}, dtype={self.dtype}, "
                f"done={self.n_done()}, complete={self.is_complete})")


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
    ids = _check_ids(ids, Path(out_path))
    shards = [FeatureStore.load(p) for p in shard_paths]
    if not shards:
        raise CropiError("no shard stores to merge", file=out_path)
    given = _normalise_spec(spec)
    for shard in shards:
        if shard.spec != given:
            raise _spec_mismatch(shard.path, shard.spec, given, "this shard")
        if (shard.k, shard.dtype) != (shards[0].k, shards[0].dtype):
            raise CropiError(f"k={shard.k} {shard.dtype} differs from shard {shards[0].path}: "
                             f"k={shards[0].k} {shards[0].dtype}", file=shard.path)
    _check_coverage(shards, ids)
    out = FeatureStore.open(out_path, ids, shards[0].k, shards[0].dtype, spec, overwrite=overwrite)
    if out.pending():
        for shard in shards:
            for start in range(0, shard.n, _MERGE_CHUNK_ROWS):
                stop = min(start + _MERGE_CHUNK_ROWS, shard.n)
                out.write(shard.ids[start:stop], shard.features[start:stop],
                          np.asarray(shard._zero[start:stop]))
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
