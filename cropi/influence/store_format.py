"""What a feature store (:mod:`cropi.influence.features`) is on disk, apart from the store itself:
its dtypes and size, the spec and ids a reopened store is checked against, and its ``.npy`` files
(per-row CRC-32, header sizes, preallocation on a full disk, atomic creation, unsharing of
hard-linked files). :mod:`cropi.influence.shards` uses the same spec and id checks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cropi.utils.errors import CropiError
from cropi.utils.hashing import stable_json
from cropi.utils.io import DiskFull, atomic_path, is_disk_full

DTYPES: dict[str, np.dtype] = {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32)}
FILES = ("manifest.json", "spec.json", "ids.json", "features.npy", "zero.npy", "done.npy", "check.npy")
"""Every file a store writes (:func:`wipe_store` removes these and nothing else)."""


def row_checksums(rows: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """CRC-32 of every row's bytes (as stored: the store's dtype) followed by its zero flag,
    ``uint32 [b]``."""
    rows = np.ascontiguousarray(rows)
    flat = rows.reshape(rows.shape[0], -1)
    flags = np.asarray(zero, dtype=bool)
    return np.fromiter((zlib.crc32(b"\1" if z else b"\0", zlib.crc32(r)) for r, z in zip(flat, flags)),
                       dtype=np.uint32, count=flat.shape[0])


def array_size(file: Path) -> tuple[int, int, int] | None:
    """``(header bytes, bytes the header promises in all, bytes on disk)`` of a ``.npy`` file;
    None when it is missing or its header cannot be read."""
    try:
        with open(file, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(fh))
            header = fh.tell()
        return header, header + int(np.prod(shape)) * dtype.itemsize, file.stat().st_size
    except (OSError, ValueError):
        return None


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


def normalise_spec(spec: dict[str, Any]) -> dict[str, Any]:
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


def spec_mismatch(path: Path, stored: dict[str, Any], given: dict[str, Any], what: str) -> CropiError:
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


def check_ids(ids: Sequence[str], where: Path | None = None) -> list[str]:
    ids = [str(i) for i in ids]
    seen: set[str] = set()
    for id_ in ids:
        if id_ in seen:
            raise CropiError(f"prompt id {id_!r} appears more than once", file=where,
                             fix="prompt ids must be unique")
        seen.add(id_)
    return ids


def preallocate(file: Path, what: str) -> None:
    """Allocate every block of ``file`` now (a sparse file's writes could meet a full disk later:
    SIGBUS under a memory map). A full disk: :class:`DiskFull` naming what is missing."""
    fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        missing = max(0, st.st_size - st.st_blocks * 512)
        if not missing:
            return
        try:
            os.posix_fallocate(fd, 0, st.st_size)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(file.parent, missing, what) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    finally:
        os.close(fd)


def create_array(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Create a zero-filled, preallocated ``.npy`` atomically (a killed process never leaves a
    torn header)."""
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        arr.flush()
        del arr
        preallocate(tmp, f"the feature store file {path.name}")


def wipe_store(path: Path) -> None:
    """Remove the store's own files (and stray temporaries); never anything else."""
    for name in FILES:
        (path / name).unlink(missing_ok=True)
    for tmp in path.glob(".tmp-*"):
        tmp.unlink(missing_ok=True)


def unshare(file: Path) -> None:
    """Give ``file`` its own inode when it is hard-linked (a comparison's stage-0 stores are), so
    that repairing this store never writes into another run's."""
    if file.exists() and file.stat().st_nlink > 1:
        with atomic_path(file) as tmp:
            shutil.copyfile(file, tmp)
