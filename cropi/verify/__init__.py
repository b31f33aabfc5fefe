"""Verifiers: pure functions ``(completion: str, record) -> Verdict`` with a binary reward.

Built in: ``math`` (math-verify / sympy equivalence), ``numeric`` (final number, relative
tolerance 1e-6) and ``reasoning_gym`` (reasoning-gym's own scorer, binarised). Use
:func:`verify` to dispatch on ``record.verifier``; it never raises or hangs because of the
completion text, from any thread or process. Never imports torch; math_verify and
reasoning_gym are imported on first use.
"""

from cropi.verify.base import (
    DEFAULT_TIMEOUT_S,
    Verdict,
    Verifier,
    check_record,
    get_verifier,
    list_verifiers,
    register_verifier,
    verify,
)
from cropi.verify import math_verifier, numeric, rgym  # noqa: F401  (register the built-ins)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Verdict",
    "Verifier",
    "check_record",
    "get_verifier",
    "list_verifiers",
    "register_verifier",
    "verify",
]
