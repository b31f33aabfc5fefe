"""Feature store: projected gradients ``[n_prompts, k]`` for an ordered list of prompt ids.

A store is a folder::

    spec.json       what produced the features (written when the store is created, before any row)
    ids.json        the prompt ids, in row order
    features.npy    [n, k], fp16 or fp32 (.npy; rows written with pwrite, read in chunks)
    zero.npy        memmap bool [n]: prompt's gradient is exactly zero (all rewards equal)
    check.npy       memmap uint32 [n]: CRC-32 of each written row's bytes
    done.npy        memmap bool [n]: row written (flushed after the features of every batch)
    manifest.json   written LAST by :meth:`FeatureStore.finalize`; its presence means "complete"

Resuming: :meth:`FeatureStore.open` on an existing folder with the same spec and ids reopens it and
:meth:`FeatureStore.pending` lists the ids still to compute. Rows and their checksums are flushed
before their ``done`` flags, so a process killed at any instant (``kill -9``) never leaves a row
marked done that was not written; a row written without its flag is simply computed again.

Integrity: reopening a store to write (a resume, or a stage scored again) checks every done row
against its CRC-32; a row that differs (a damaged disk, a copy cut short) is said and computed
again (a complete store becomes incomplete until it is). :meth:`FeatureStore.damaged_rows` is the
check; readers (:meth:`FeatureStore.chunks`) raise :class:`DamagedRows` on such a row. A file
that cannot be read at all is one line naming it.

Disk space: a new store checks that its files fit and preallocates them (``posix_fallocate``), so a
full disk is one line ("needs X MB in DIR, Y MB free") before any row is computed, never a SIGBUS
under a memory map or a row cut short; a reopened store allocates what an older, sparse one lacks.

Memory: rows are written with ``pwrite`` and read back in chunks of :data:`READ_ROWS` rows by file
reads (:meth:`FeatureStore.chunks`), so neither side keeps mapped pages of the whole store in
memory; :meth:`FeatureStore.read` (the whole store as float32) remains for small stores.

Sharding: each shard is an ordinary store over a contiguous range of the ids;
:mod:`cropi.influence.shards` splits the ids and joins complete shards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cropi import __version__
from cropi.influence.store_format import (
    DTYPES,
    array_size,
    check_ids,
    create_array,
    dtype_name,
    normalise_spec,
    preallocate,
    row_checksums,
    spec_mismatch,
    store_bytes,
    unshare,
    wipe_store,
)
from cropi.utils.errors import CropiError, check_stop, stop_requested
from cropi.utils.hashing import fingerprint
from cropi.utils.io import (
    atomic_write_json,
    check_free,
    damaged,
    disk_errors,
    read_json,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ARRAYS = ("features.npy", "zero.npy", "done.npy", "check.npy")
READ_ROWS = 4096
"""Rows per chunk that :meth:`FeatureStore.chunks` reads (and :func:`cropi.influence.shards.merge_stores` copies)."""
_FIX = "delete the store's folder and rerun the scoring step: it computes the store again"


class DamagedRows(CropiError):
    """Done rows of a feature store whose bytes no longer match their CRC-32 (``rows``: their
    positions). Reopening the store to write recomputes them."""

    def __init__(self, path: Path, rows: np.ndarray, n: int) -> None:
        super().__init__(f"{rows.size} of {n} rows do not match their checksums (damaged)", file=path,
                         fix="rerun the scoring step: it recomputes those rows")
        self.path, self.rows = path, rows


def _store_meta(spec: dict[str, Any], k: int, dtype: str, n: int) -> dict[str, Any]:
    return {"spec": normalise_spec(spec), "k": int(k), "dtype": dtype, "n": int(n)}


class FeatureStore:
    """Projected gradients ``[n, k]`` of an ordered id list, on disk. Use :meth:`open` or :meth:`load`."""

    def __init__(self, path: Path, ids: list[str], k: int, dtype: str, spec: dict[str, Any],
                 readonly: bool) -> None:
        self.path, self.ids, self.k, self.dtype, self.spec = path, ids, k, dtype, spec
        self.readonly = readonly
        self._pos = {id_: i for i, id_ in enumerate(ids)}
        self._fd: int | None = None
        self._map()

    def _map(self) -> None:
        mode = "r" if self.readonly else "r+"
        n = len(self.ids)
        self._cut_rows = None if self.readonly else self._cut_short()
        # the map is for the ``features`` view only (rows are written with pwrite): untouched
        # pages cost no memory
        self._features = self._open_array("features.npy", (n, self.k), DTYPES[self.dtype], mode)
        self._offset = int(self._features.offset)
        self._zero = self._open_array("zero.npy", (n,), np.dtype(bool), mode)
        self._done = self._open_array("done.npy", (n,), np.dtype(bool), mode)
        has_check = (self.path / "check.npy").exists()
        self._check = self._open_array("check.npy", (n,), np.dtype(np.uint32), mode) if has_check else None
        if not self.readonly:
            for name in _ARRAYS:
                if (self.path / name).exists():
                    preallocate(self.path / name, f"the feature store file {name}")
            self._fd = os.open(self.path / "features.npy", os.O_RDWR | os.O_CLOEXEC)

    def _cut_short(self) -> int | None:
        """A writable store whose files were cut short (an interrupted copy, a crash): warn, and
        return the first features row lost (its rows from there are computed again; a flag file
        cut short reads as not done, or fails its checksum). None when every file is whole."""
        cut = None
        for name in _ARRAYS:
            size = array_size(self.path / name)
            if size is None or size[2] >= size[1]:
                continue
            header, full, actual = size
            log.warning("%s is cut short (%d of %d bytes): the rows past the cut are computed again",
                        self.path / name, actual, full)
            if name == "features.npy":
                row_bytes = self.k * DTYPES[self.dtype].itemsize
                cut = max(0, actual - header) // row_bytes
                os.truncate(self.path / name, full)
        return cut

    def _unmap(self) -> None:
        for arr in (self._zero, self._done, self._check):
            if arr is not None and not self.readonly:
                arr.flush()
        self._features = self._zero = self._done = self._check = None  # type: ignore[assignment]
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open_array(self, name: str, shape: tuple[int, ...], dtype: np.dtype, mode: str) -> np.memmap:
        file = self.path / name
        try:
            arr = np.lib.format.open_memmap(file, mode=mode)
        except (OSError, ValueError) as exc:
            raise damaged(file, exc, fix=_FIX) from None
        if arr.shape != shape or arr.dtype != dtype:
            raise damaged(file, f"shape {arr.shape} {arr.dtype}, expected {shape} {dtype}", fix=_FIX)
        return arr

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def open(cls, path: str | Path, ids: Sequence[str], k: int, dtype: str | np.dtype | type,
             spec: dict[str, Any], overwrite: bool = False) -> FeatureStore:
        """Create the store at ``path``, or reopen it to resume when its spec and ids match.

        ``spec``: what produced the features (model fingerprint, projection spec, dataset
        fingerprint, gradient config, stage...). A different spec, k, dtype or id list raises
        :class:`CropiError` showing both specs; ``overwrite=True`` wipes the store and starts anew.
        A reopened store's done rows are checked against their checksums; damaged ones are said
        and computed again (:meth:`recompute`).
        """
        path = Path(path)
        ids = check_ids(ids, path)
        if int(k) < 1:
            raise CropiError(f"k must be >= 1, got {k}", field="projection.k")
        meta = _store_meta(spec, int(k), dtype_name(dtype), len(ids))
        if overwrite and path.exists():
            log.info("overwriting feature store %s", path)
            wipe_store(path)
        existing = (path / "spec.json").exists()
        if existing:
            cls._check_existing(path, meta, ids)
        else:
            cls._create(path, meta, ids)
        store = cls(path, ids, meta["k"], meta["dtype"], meta["spec"], readonly=False)
        if existing:
            if store._cut_rows is not None:
                lost = np.flatnonzero(np.asarray(store._done))
                store.recompute(lost[lost >= store._cut_rows])
            store._check_rows()
            if store.is_complete and store.n_done() < store.n:  # a flag file lost rows
                store.recompute(np.flatnonzero(~np.asarray(store._done)))
        return store

    @staticmethod
    def _check_existing(path: Path, meta: dict[str, Any], ids: list[str]) -> None:
        stored = read_json(path / "spec.json", fix=_FIX)
        keys = ("spec", "k", "dtype")
        stored_cmp = {key: stored.get(key) for key in keys}
        given_cmp = {key: meta[key] for key in keys}
        if stored_cmp != given_cmp:
            raise spec_mismatch(path, stored_cmp, given_cmp, "this feature store")
        stored_ids = read_json(path / "ids.json", fix=_FIX)
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
        wipe_store(path)  # leftovers of a creation killed before spec.json
        n, k = meta["n"], meta["k"]
        need = store_bytes(n, k, meta["dtype"]) + 6 * n + 4096 * len(_ARRAYS)
        check_free(path, need, f"the feature store of {n} prompts x k={k} {meta['dtype']}")
        create_array(path / "features.npy", (n, k), DTYPES[meta["dtype"]])
        create_array(path / "zero.npy", (n,), np.dtype(bool))
        create_array(path / "check.npy", (n,), np.dtype(np.uint32))
        create_array(path / "done.npy", (n,), np.dtype(bool))
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
        manifest = read_json(path / "manifest.json", fix=_FIX)
        ids = read_json(path / "ids.json", fix=_FIX)
        try:
            k, dtype, spec = int(manifest["k"]), manifest["dtype"], manifest["spec"]
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged(path / "manifest.json", f"no {exc}", fix=_FIX) from None
        return cls(path, ids, k, dtype, spec, readonly=True)

    # ----------------------------------------------------------------------------- integrity
    def _check_rows(self) -> None:
        """Checksums for a reopened store: added to a store written before they existed (its
        done rows trusted once), else compared; damaged rows are computed again."""
        if self._check is None:
            create_array(self.path / "check.npy", (self.n,), np.dtype(np.uint32))
            self._check = self._open_array("check.npy", (self.n,), np.dtype(np.uint32), "r+")
            for start, raw, zero in self.chunks(raw=True, verify=False):
                self._check[start:start + len(raw)] = row_checksums(raw, zero)
            self._check.flush()
            log.info("%s: added row checksums to a store written without them", self.path)
            return
        bad = self.damaged_rows()
        if bad.size:
            log.warning("%s: %d of %d done rows do not match their checksums (damaged): computing "
                        "them again", self.path, bad.size, self.n)
            self.recompute(bad)

    def damaged_rows(self) -> np.ndarray:
        """Positions of done rows whose bytes differ from their CRC-32 (empty when the store
        keeps no checksums). Reads the store once, chunk by chunk."""
        if self._check is None:
            return np.zeros(0, dtype=np.int64)
        bad = []
        for start, raw, zero in self.chunks(raw=True, verify=False):
            sl = slice(start, start + len(raw))
            done = np.flatnonzero(np.asarray(self._done[sl]))
            if done.size:
                crc = row_checksums(raw[done], zero[done])
                bad.append(start + done[crc != np.asarray(self._check[sl])[done]])
        return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)

    def recompute(self, rows: np.ndarray) -> None:
        """Mark ``rows`` (positions) as not written, so the scoring step computes them again; a
        complete store becomes incomplete. Hard-linked files are copied first."""
        if self.readonly:
            raise CropiError("a store opened read-only cannot be repaired", file=self.path)
        rows = np.asarray(rows, dtype=np.int64)
        if not rows.size:
            return
        self._unmap()
        try:
            for name in _ARRAYS:
                unshare(self.path / name)
            (self.path / "manifest.json").unlink(missing_ok=True)
        finally:
            self._map()
        self._done[rows] = False
        self._done.flush()

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
        """Read-only view of the stored features, ``[n, k]`` in the store dtype (no copy: a memory
        map, whose pages count in the process's memory once touched; see :meth:`chunks`)."""
        view = self._features.view(np.ndarray)
        view.flags.writeable = False
        return view

    @property
    def zero(self) -> np.ndarray:
        """``bool [n]``: rows whose gradient is exactly zero (a copy)."""
        return np.asarray(self._zero, dtype=bool).copy()

    def n_done(self) -> int:
        return int(np.count_nonzero(self._done))

    def pending(self) -> list[str]:
        """Ids whose row is not written yet, in store order."""
        return [self.ids[i] for i in np.flatnonzero(~np.asarray(self._done))]

    # ----------------------------------------------------------------------------- writing
    def write(self, ids: Sequence[str], feats: np.ndarray, zero: Sequence[bool]) -> None:
        """Write rows ``feats [b, k]`` for ``ids`` (b of them) and mark them done.

        ``zero[i]``: prompt ``ids[i]`` has an exactly zero gradient (all rewards equal); its row is
        stored as zeros and it is excluded from scoring. Features, the zero mask and the
        checksums are flushed before the ``done`` flags, so a killed process never leaves an
        unwritten row marked done. A safe point: a requested stop ends the work after it.
        """
        if self.readonly or self.is_complete:
            raise CropiError("this feature store is complete (finalized); it cannot be written",
                             file=self.path, fix="pass --overwrite to recompute it")
        pos = self._positions(ids)
        rows, zero_arr = self._prepare_rows(ids, feats, zero)
        if not pos.size:
            return
        self._write_rows(pos, rows)
        self._zero[pos] = zero_arr
        self._check[pos] = row_checksums(rows, zero_arr)
        with disk_errors(self.path, "the feature store's flags"):
            self._zero.flush()
            self._check.flush()
            self._done[pos] = True
            self._done.flush()
        if stop_requested():
            check_stop(f"after {self.n_done()} of {self.n} prompts of {self.path} (the rest is computed "
                       "on resume)")

    def _write_rows(self, pos: np.ndarray, rows: np.ndarray) -> None:
        """``rows`` into ``features.npy`` at positions ``pos`` (pwrite of each contiguous run,
        then fdatasync: on disk before any of them is marked done)."""
        order = np.argsort(pos, kind="stable")
        sorted_pos = pos[order]
        breaks = np.flatnonzero(np.diff(sorted_pos) != 1) + 1
        row_bytes = self.k * DTYPES[self.dtype].itemsize
        assert self._fd is not None
        with disk_errors(self.path, "the feature store's rows", need=int(rows.nbytes)):
            for run in np.split(np.arange(len(pos)), breaks):
                data = memoryview(np.ascontiguousarray(rows[order[run]])).cast("B")
                offset = self._offset + int(sorted_pos[run[0]]) * row_bytes
                while data:
                    written = os.pwrite(self._fd, data, offset)
                    data, offset = data[written:], offset + written
            os.fdatasync(self._fd)

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
        with disk_errors(self.path, "the feature store's flags"):
            self._zero.flush()
            self._done.flush()
            if self._check is not None:
                self._check.flush()
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
            "checksums": "crc32 per row (check.npy)" if self._check is not None else None,
        })
        log.info("finalized feature store %s (%d prompts, %d zero-gradient)", self.path, self.n,
                 int(np.count_nonzero(self._zero)))

    # ----------------------------------------------------------------------------- reading
    def chunks(self, rows: int = READ_ROWS, *, raw: bool = False,
               verify: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(start, feats [b, k], zero bool [b])`` for consecutive chunks of ``rows`` rows, read
        from the file (no memory map: memory stays at one chunk whatever the store's size).
        ``feats`` is float32, or the stored dtype with ``raw``. ``verify``: done rows are checked
        against their checksums (:class:`DamagedRows` naming every damaged row of the chunk)."""
        itemsize = DTYPES[self.dtype].itemsize
        try:
            fh = open(self.path / "features.npy", "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise damaged(self.path / "features.npy", exc, fix=_FIX) from None
        with fh:
            fh.seek(self._offset)
            for start in range(0, self.n, rows):
                b = min(rows, self.n - start)
                buf = np.empty((b, self.k), dtype=DTYPES[self.dtype])
                got = fh.readinto(memoryview(buf).cast("B"))
                if got != b * self.k * itemsize:
                    raise damaged(self.path / "features.npy", "shorter than its header says", fix=_FIX)
                if verify and self._check is not None:
                    sl = slice(start, start + b)
                    done = np.flatnonzero(np.asarray(self._done[sl]))
                    zero = np.asarray(self._zero[sl], dtype=bool)
                    bad = done[row_checksums(buf[done], zero[done]) != np.asarray(self._check[sl])[done]]
                    if bad.size:
                        raise DamagedRows(self.path, start + bad, self.n)
                yield start, (buf if raw else buf.astype(np.float32)), np.asarray(self._zero[start:start + b], dtype=bool)

    def read(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(ids, feats float32 [n, k], zero bool [n])`` of a complete store (copies; the whole
        store in memory: :meth:`chunks` reads it piece by piece)."""
        if not self.is_complete:
            raise CropiError("cannot read an incomplete feature store (manifest.json is missing)",
                             file=self.path, fix="finish the scoring step (rerun to resume)")
        feats = np.empty((self.n, self.k), dtype=np.float32)
        for start, chunk, _ in self.chunks():
            feats[start:start + len(chunk)] = chunk
        return list(self.ids), feats, np.asarray(self._zero, dtype=bool).copy()

    def close(self) -> None:
        """Flush and release the memory maps and the file."""
        self._unmap()

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, n={self.n}, k={self.k}, dtype={self.dtype}, "
                f"done={self.n_done()}, complete={self.is_complete})")
