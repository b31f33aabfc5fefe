"""One inter-process lock for cropi and its benchmarks: an exclusive ``flock`` on a lock file
that names its owner.

``with locked(path):`` waits until no other process holds the lock on ``path``, then writes the
owner into the file as one JSON line (``pid``, ``host``, ``command``, ``started``: UTC time the
lock was taken) and removes the file again on release. The kernel drops a ``flock`` when its
process dies, so a killed holder never blocks the next one; it only leaves its file and owner line
behind, which :func:`lock_owner` reads, :func:`is_held` tells apart from a live holder, and the next
holder reports as taken over (a warning naming the dead owner).

:func:`hold` is the same lock, re-entrant within a process and kept until released (a run's writer
lock: :class:`cropi.curriculum.rundir.RunDir` takes it at its first write). Without ``wait`` it
refuses a lock held by another process at once with :class:`LockHeld` (one line naming the owner);
with ``wait`` it says whom it waits for, then waits. The default of ``wait`` comes from
:func:`waiting` (the CLI's ``--wait``).

Removing the file on release is safe: a process that locked a file which was meanwhile removed
(or replaced) sees that its descriptor no longer names ``path`` and tries again.

POSIX only (``fcntl``). A :func:`locked` lock is per open file: two ``locked`` blocks on the same
path exclude each other within one process too (nested use deadlocks); :func:`hold` counts.
"""

from __future__ import annotations

import contextvars
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropi.utils.errors import CropiError, check_stop

log = logging.getLogger(__name__)

_POLL_S = 0.2
_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("cropi_lock_wait", default=False)


class LockHeld(CropiError):
    """``locked(path, wait=False)`` (or :func:`hold`) found the lock taken; ``owner`` is the
    holder's record."""

    def __init__(self, path: Path, owner: dict[str, Any] | None, what: str | None = None) -> None:
        super().__init__(f"{what or path} is in use by {describe_owner(owner)}",
                         fix="wait for it to finish, rerun with --wait to start when it does, or stop it")
        self.path, self.owner = path, owner


def describe_owner(owner: dict[str, Any] | None) -> str:
    """``pid 12 on host (cropi score --name x, since 2024-01-02T03:04:05Z)`` for a lock owner."""
    if not owner:
        return "another process (no owner recorded)"
    extra = ", ".join(str(v) for v in (owner.get("command"),
                                       f"since {owner['started']}" if owner.get("started") else None) if v)
    return f"pid {owner.get('pid')} on {owner.get('host')}" + (f" ({extra})" if extra else "")


def owner_record() -> dict[str, Any]:
    """This process as a lock owner: pid, host, command line and the current UTC time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


@contextmanager
def waiting(wait: bool = True) -> Iterator[None]:
    """Inside the block, :func:`hold` waits for a lock held elsewhere instead of refusing it
    (``cropi ... --wait``; also what processes that share a store do)."""
    token = _WAIT.set(wait)
    try:
        yield
    finally:
        _WAIT.reset(token)


def waits() -> bool:
    """The current default of :func:`hold`'s ``wait`` (see :func:`waiting`)."""
    return _WAIT.get()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _acquire(path: Path, wait: bool, what: str | None) -> tuple[int, dict[str, Any]]:
    """Lock ``path`` (created with its folder); returns the open descriptor and the owner record
    written into it. Refuses with :class:`LockHeld` unless ``wait``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    owner = lock_owner(path)
                    if not wait:
                        raise LockHeld(path, owner, what) from None
                    if not announced:
                        announced = True
                        log.warning("waiting for %s: it is in use by %s", what or path,
                                    describe_owner(owner))
                    check_stop(f"waiting for {what or path}")
                    time.sleep(_POLL_S)
            if not _same_file(fd, path):  # released and removed (or replaced) while we waited
                os.close(fd)
                continue
            stale = lock_owner(path)
            if stale:
                log.warning("took over the lock of %s from %s, which is no longer running "
                            "(killed or crashed)", what or path, describe_owner(stale))
            owner = owner_record()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
            return fd, owner
        except BaseException:
            os.close(fd)
            raise


def _release(fd: int, path: Path) -> None:
    """Remove the lock file (still ours: we hold it), then unlock and close."""
    try:
        if _same_file(fd, path):
            path.unlink(missing_ok=True)
        else:
            os.ftruncate(fd, 0)
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextmanager
def locked(path: str | Path, *, wait: bool = True, what: str | None = None) -> Iterator[dict[str, Any]]:
    """Hold the exclusive lock on ``path`` (created with its folder) for the ``with`` block; yields
    the owner record written into the file. ``wait=False``: raise :class:`LockHeld` at once when
    another holder has it (``what`` names the locked thing in messages)."""
    path = Path(path)
    fd, owner = _acquire(path, wait, what)
    try:
        yield owner
    finally:
        _release(fd, path)


@dataclass
class _Held:
    fd: int
    path: Path
    owner: dict[str, Any]
    pid: int
    count: int = 0


_HELD: dict[str, _Held] = {}
_GUARD = threading.RLock()


class Lease:
    """One reference to a lock this process holds through :func:`hold`. :meth:`release` (or the
    end of a ``with`` block) drops it; the lock is released with the last reference."""

    def __init__(self, key: str, held: _Held) -> None:
        self.key, self.held, self.owner, self.released = key, held, held.owner, False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        _drop(self.key, self.held)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _key(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path.parent.resolve() / path.name)


def hold(path: str | Path, *, wait: bool | None = None, what: str | None = None) -> Lease:
    """Take the lock on ``path`` for this process, or one more reference to it when this process
    holds it already. ``wait=None``: as :func:`waiting` says (default: refuse at once with
    :class:`LockHeld`). While waiting, a requested stop (:func:`cropi.utils.errors.request_stop`)
    ends the wait."""
    path = Path(path)
    key = _key(path)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
            return Lease(key, held)
    fd, owner = _acquire(path, waits() if wait is None else wait, what)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid():  # another thread took it meanwhile
            _release(fd, path)
        else:
            held = _HELD[key] = _Held(fd, path, owner, os.getpid())
        held.count += 1
        return Lease(key, held)


def _drop(key: str, held: _Held, force: bool = False) -> None:
    with _GUARD:
        if _HELD.get(key) is not held or held.pid != os.getpid():
            return  # released already (a lease of an earlier hold)
        held.count -= 1
        if held.count > 0 and not force:
            return
        del _HELD[key]
    _release(held.fd, held.path)


def held_locks() -> set[str]:
    """The locks this process holds through :func:`hold` (their resolved paths)."""
    with _GUARD:
        return {k for k, h in _HELD.items() if h.pid == os.getpid()}


def release_all(keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Release every lock this process holds through :func:`hold`, whatever its leases, except
    those in ``keep``: the end of a command, successful or not (its leases may outlive it)."""
    for key in held_locks() - set(keep):
        held = _HELD.get(key)
        if held is not None:
            _drop(key, held, force=True)


def holds(path: str | Path) -> bool:
    """Whether this process holds the lock on ``path`` through :func:`hold`."""
    held = _HELD.get(_key(Path(path)))
    return held is not None and held.pid == os.getpid()


def lock_owner(path: str | Path) -> dict[str, Any] | None:
    """The owner record in ``path``: the holder's while the lock is held, a dead holder's when it
    was killed inside the block; None for a missing, empty or unreadable file."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def is_held(path: str | Path) -> bool:
    """Whether some open file (this process's included) holds the lock on ``path`` now."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
