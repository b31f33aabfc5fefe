"""A wall-clock deadline for a call, usable from any thread (unlike ``signal.alarm``).

math-verify's own timeouts use ``signal.alarm``, which fails off the main thread, and sympy can
run for ever on inputs such as ``(10^{10})!``. :func:`call_with_deadline` runs the function in the
calling thread and arms a watchdog thread that, when the time is up, raises an exception *inside*
the calling thread (CPython's ``PyThreadState_SetAsyncExc``, the same mechanism as a signal
handler: it is delivered between bytecodes). It cannot interrupt one long C call (a single huge
big-integer power); callers screen such inputs out before.

Exactly one exception is ever injected, and one not yet delivered when the call ends is cleared,
so nothing leaks into the caller's later code.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class _DeadlineExceeded(BaseException):
    """Injected into the guarded thread. A BaseException so that ``except Exception`` in
    math-verify or sympy does not swallow it."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    obj = ctypes.py_object(exc) if exc is not None else None  # None -> NULL clears a pending one
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), obj))


class _Watchdog:
    """Injects :class:`_DeadlineExceeded` into one thread once, unless stopped first."""

    def __init__(self, thread_id: int, timeout_s: float) -> None:
        self._tid = thread_id
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._done = False
        self._fired = False
        self._thread = threading.Thread(target=self._watch, name="cropi-verify-deadline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        if self._stopped.wait(self._timeout_s):
            return
        with self._lock:
            if not self._done:
                self._fired = True
                _set_async_exc(self._tid, _DeadlineExceeded)

    def stop(self) -> None:
        """Idempotent. After it returns no exception is pending for the guarded thread."""
        with self._lock:
            self._done = True
            self._stopped.set()
            if self._fired:
                _set_async_exc(self._tid, None)


def call_with_deadline(fn: Callable[[], T], timeout_s: float | None) -> T:
    """Return ``fn()``, or raise :class:`TimeoutError` once ``timeout_s`` seconds have passed.

    ``timeout_s`` None or <= 0 calls ``fn`` unguarded.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn()
    dog = _Watchdog(threading.get_ident(), timeout_s)
    try:
        try:
            dog.start()  # inside the try: with a tiny timeout it can fire before start() returns
            return fn()
        finally:
            dog.stop()
    except _DeadlineExceeded:
        dog.stop()
        raise TimeoutError(f"gave up after {timeout_s:g} s") from None
