"""Atomic writes, a full disk as one line, and files checked against their records.

Atomic writes: write to a temporary file in the same folder, then rename. A reader never sees a
half-written file; a killed process leaves at most a stray ``.tmp-*`` file, which the next writer
of the run removes (:meth:`cropi.curriculum.rundir.RunDir.acquire`).

A full disk: every write here turns ENOSPC (or a quota) into :class:`DiskFull`, a one-line
:class:`~cropi.utils.errors.CropiError` naming the folder, the free space and, when the writer knows
it, the space it needs (:func:`check_free` asks before writing). The temporary file is removed,
so nothing half-written is ever renamed into place.

Records: :func:`file_record` is a file's size and SHA-256 as stored in done records;
:func:`record_mismatch` says how a file differs from its record.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cropi.utils.errors import CropiError

log = logging.getLogger(__name__)

MB = 1e6
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28")


class DiskFull(CropiError):
    """A write failed, or would fail, for want of disk space in ``folder``."""

    def __init__(self, folder: str | Path, need: int | None = None, what: str | None = None) -> None:
        folder = Path(folder)
        free = free_bytes(folder)
        doing = f" for {what}" if what else ""
        if need is not None:
            text = f"needs {need / MB:,.1f} MB in {folder}{doing}, {free / MB:,.1f} MB free"
        else:
            text = f"the disk is full in {folder}{' writing ' + what if what else ''} ({free / MB:,.1f} MB free)"
        super().__init__(text, fix="free some space (or choose another --out-dir) and rerun the same "
                                   "command: it resumes, and nothing half-written was kept")
        self.folder, self.need, self.free = folder, need, free


def free_bytes(folder: str | Path) -> int:
    """Free bytes for this user on the filesystem of ``folder`` (its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return 0


def check_free(folder: str | Path, need: int, what: str | None = None, *, reserve: int = 0) -> None:
    """Raise :class:`DiskFull` ("needs X MB in DIR, Y MB free") unless ``need + reserve`` bytes
    are free in ``folder``."""
    if need > 0 and free_bytes(folder) < need + reserve:
        raise DiskFull(folder, need, what)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` reports a full disk or quota (an OSError's errno, or the text that
    pyarrow, safetensors and others put in their own errors)."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _FULL_TEXT)


@contextlib.contextmanager
def disk_errors(folder: str | Path, what: str | None = None, need: int | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into :class:`DiskFull`. ``need``: bytes the block
    writes; an error that does not say why it failed is taken for a full disk when fewer than that
    many bytes are left (torch.save reports "file write failed" only)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc) or (need is not None and isinstance(exc, (OSError, RuntimeError))
                                 and free_bytes(folder) < need):
            raise DiskFull(folder, need, what) from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``. A full disk
    becomes :class:`DiskFull`; the temporary file never outlives the block."""
    path = Path(path)
    with disk_errors(path.parent, path.name):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line (``\\n`` added) with a single write; on a full disk the file is cut back
    to where it was (no partial line is left for the next append to run into) and
    :class:`DiskFull` is raised."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with disk_errors(path.parent, path.name):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except BaseException:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


def read_json(path: str | Path, fix: str | None = None) -> Any:
    """The JSON in ``path``; a file that cannot be read or parsed (cut short, damaged) is a
    one-line :class:`CropiError` naming it, with ``fix`` (default: how to get it back)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise damaged(path, exc, fix) from None


class DamagedFile(CropiError, ValueError):
    """A store file that fails to read or to match its record (a ValueError too, for callers that
    already handle unparsable files)."""


def damaged(path: str | Path, exc: BaseException | str, fix: str | None = None) -> DamagedFile:
    """The one-line error of a store file that fails to read (``exc``: why)."""
    why = exc if isinstance(exc, str) else " ".join(str(exc).split())[:160] or type(exc).__name__
    return DamagedFile(f"cannot be read ({why}): the file is damaged or cut short", file=path,
                       fix=fix or "delete it and rerun the command that wrote it, or run `cropi verify` "
                                  "on the run to see what would be recomputed")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file such as ``metrics.jsonl`` (``[]`` when it is missing).

    Lines that are not a JSON object (a run still writing its last line) are skipped and logged.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    text = path.read_bytes().decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            log.warning("%s: line %d is not JSON (a run still writing?); skipped", path, lineno)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


# ------------------------------------------------------------------------------ file records
_HASHED: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (remembered per process while its size and mtime stay)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.absolute()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file, as done records keep it."""
    path = Path(path)
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def record_mismatch(path: str | Path, record: dict[str, Any], *, hash_check: bool = True) -> str | None:
    """How ``path`` differs from its ``record`` (:func:`file_record`): ``"missing"``, ``"N bytes,
    expected M"`` or ``"content differs (SHA-256)"``; None when it matches."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if "bytes" in record and size != int(record["bytes"]):
        return f"{size} bytes, expected {int(record['bytes'])}"
    if hash_check and "sha256" in record and sha256_file(path) != record["sha256"]:
        return "content differs from its SHA-256"
    return None
