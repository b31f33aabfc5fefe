"""One inter-process lock for cropi and its benchmarks: an exclusive ``flock`` on a lock file
that names its owner.

``with locked(path):`` waits until no other process holds the lock on ``path``, then writes the
owner into the file as one JSON line (``pid``, ``host``, ``command``, ``started``: UTC time the
lock was taken) and empties it again on release. The kernel drops a ``flock`` when its process
dies, so a killed holder never blocks the next one; it only leaves its owner line behind, which
:func:`lock_owner` reads and :func:`is_held` tells apart from a live holder.

POSIX only (``fcntl``). A lock is per open file: two ``locked`` blocks on the same path exclude
each other within one process too (nested use deadlocks).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cropi.utils.errors import CropiError


class LockHeld(CropiError):
    """``locked(path, wait=False)`` found the lock taken; ``owner`` is the holder's record."""

    def __init__(self, path: Path, owner: dict[str, Any] | None) -> None:
        who = "unknown owner" if owner is None else f"pid {owner.get('pid')} on {owner.get('host')}"
        super().__init__(f"{path} is locked by {who}", fix="wait for it to finish, or stop it")
        self.path, self.owner = path, owner


def owner_record() -> dict[str, Any]:
    """This process as a lock owner: pid, host, command line and the current UTC time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


@contextmanager
def locked(path: str | Path, *, wait: bool = True) -> Iterator[dict[str, Any]]:
    """Hold the exclusive lock on ``path`` (created with its folder) for the ``with`` block; yields
    the owner record written into the file. ``wait=False``: raise :class:`LockHeld` at once when
    another holder has it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeld(path, lock_owner(path)) from None
        try:
            owner = owner_record()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
            yield owner
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
        fd = os.open(path, os.O_RDONLY)
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
