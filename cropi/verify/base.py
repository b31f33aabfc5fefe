"""Verdicts, the Verifier protocol, the verifier registry and the top-level :func:`verify`.

A verifier is a pure function ``(completion: str, record: PromptRecord) -> Verdict`` with a
binary reward. :func:`verify` picks the verifier named by ``record.verifier`` and never raises or
hangs because of the completion text: any error, or running past ``timeout_s``, gives reward 0
with the reason. It raises :class:`CropiError` only for a bad *record* (unknown verifier name,
missing reasoning-gym metadata, a gold answer the verifier cannot read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from cropi.utils.errors import CropiError
from cropi.utils.registry import Registry
from cropi.verify.deadline import call_with_deadline

if TYPE_CHECKING:  # verifiers only read record.answer / .meta / .verifier / .id at run time
    from cropi.data.schema import PromptRecord

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one completion. ``reward`` is exactly 0.0 or 1.0."""

    reward: float
    extracted: str | None
    reason: str

    def __post_init__(self) -> None:
        if isinstance(self.reward, bool) or self.reward not in (0.0, 1.0):
            raise ValueError(f"Verdict.reward must be 0.0 or 1.0, got {self.reward!r}")
        object.__setattr__(self, "reward", float(self.reward))

    @classmethod
    def of(cls, correct: bool, extracted: str | None, reason: str) -> Verdict:
        return cls(1.0 if correct else 0.0, extracted, reason)


class Verifier(Protocol):
    """Scores one completion against one record; a pure function of the two."""

    def __call__(self, completion: str, record: PromptRecord) -> Verdict: ...


VERIFIERS: Registry[Verifier] = Registry("verifier")
"""Verifiers by name (a record's ``meta.verifier``)."""


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Decorator registering a verifier under ``name``; a name can be registered once."""
    return VERIFIERS.register(name)


def list_verifiers() -> list[str]:
    """Names of the registered verifiers, sorted."""
    return sorted(VERIFIERS.names())


def get_verifier(name: str) -> Verifier:
    """The verifier registered as ``name``; :class:`CropiError` naming the known ones if none."""
    return VERIFIERS.get(name, field="meta.verifier")


def verify(
    completion: str, record: PromptRecord, *, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> Verdict:
    """Score ``completion`` with the record's verifier. Safe from any thread and any process.

    Never raises or hangs because of the completion: errors and calls running past ``timeout_s``
    seconds (None: no limit) give reward 0. Raises :class:`CropiError` for a bad record.
    """
    verifier = get_verifier(record.verifier)
    if not isinstance(completion, str):
        return Verdict(0.0, None, f"completion is {type(completion).__name__}, not text")
    try:
        verdict = call_with_deadline(lambda: verifier(completion, record), timeout_s)
    except CropiError:
        raise
    except TimeoutError:
        log.debug("verifier %s timed out on record %s", record.verifier, record.id)
        return Verdict(0.0, None, f"timed out after {timeout_s:g} s")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a verifier must not take the caller down
        log.debug("verifier %s failed on record %s", record.verifier, record.id, exc_info=True)
        return Verdict(0.0, None, f"verifier error: {type(exc).__name__}")
    if not isinstance(verdict, Verdict):
        return Verdict(0.0, None, f"verifier returned {type(verdict).__name__}, not a Verdict")
    return verdict


def check_record(record: PromptRecord, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> None:
    """Raise :class:`CropiError` unless the record's gold answer, given as the completion,
    scores 1 under its own verifier (catches unreadable gold answers before training)."""
    verdict = verify(record.answer, record, timeout_s=timeout_s)
    if verdict.reward != 1.0:
        raise CropiError(
            f"the gold answer {record.answer[:80]!r} does not verify against itself "
            f"with verifier {record.verifier!r} ({verdict.reason})",
            field="answer", fix="fix the answer or choose another verifier in meta.verifier",
        )
