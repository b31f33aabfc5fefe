"""The one error type for mistakes a user can fix (bad file, bad field, bad config), and stop
requests (Ctrl-C, SIGTERM) that end work at a safe point.

The CLI prints a :class:`CropiError` on one line and exits with code 2; a :class:`Stopped` on one
line saying where it stopped and how to resume.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class CropiError(Exception):
    """A user-correctable error. The message says where (file, row, field) and how to fix it."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        parts = []
        if file is not None:
            parts.append(str(file))
        if row is not None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field '{field}'")
        where = ": ".join([", ".join(parts)]) if parts else ""
        text = f"{where}: {message}" if where else message
        if fix:
            text = f"{text} ({fix})"
        super().__init__(" ".join(text.split()))
        self.file, self.row, self.field, self.fix = file, row, field, fix


# ------------------------------------------------------------------------------ stop requests
class Stopped(KeyboardInterrupt):
    """A requested stop (Ctrl-C, SIGTERM: :func:`stop_on_signals`) reached a safe point: the
    work done so far is written and marked, ``where`` says where it stopped. A KeyboardInterrupt,
    so code that handles exceptions never swallows it."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


_STOP: dict[str, str | None] = {"signal": None}


def request_stop(reason: str = "stop") -> None:
    """Ask the running work to stop at its next safe point (:func:`check_stop`)."""
    _STOP["signal"] = reason


def clear_stop() -> None:
    _STOP["signal"] = None


def stop_requested() -> str | None:
    """The reason of a pending stop request (e.g. ``"SIGTERM"``), None when there is none."""
    return _STOP["signal"]


def check_stop(where: str) -> None:
    """A safe point: everything before it is written and marked done. Raises :class:`Stopped`
    (naming ``where``) when a stop was requested."""
    if _STOP["signal"] is not None:
        raise Stopped(where)


@contextlib.contextmanager
def stop_on_signals(say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Inside the block, the first SIGINT (Ctrl-C) or SIGTERM requests a stop at the next safe
    point (``say`` tells the user so); a second one raises KeyboardInterrupt at once (every write
    is atomic, so nothing is left half-written). Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stop_requested() is not None:
            raise KeyboardInterrupt(name)
        request_stop(name)
        say(f"{name}: stopping at the next safe point (the work done so far is kept); "
            f"press Ctrl-C again to stop at once")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    clear_stop()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        clear_stop()
